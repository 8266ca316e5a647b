"""The process environment every `flows` entry point runs in: Prefect's home, logging and telemetry, Dask's log
level. Prefect reads these variables when it is imported, so `configure` must run before the first
`import prefect`: `flows/__init__.py` calls it, which puts it ahead of every module of this package (and of
whatever they import) in every entry point (`python -m flows.pipeline|cli|deploy|tables`, the `lagcl` script,
scripts/ that import flows). Values already set in the environment win (setdefault)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def configure() -> None:
    os.environ.setdefault("PREFECT_HOME", str(REPO_ROOT / "cache" / "prefect"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # the temporary server migrates a fresh SQLite database on first start: on a loaded 2-core machine that
    # can exceed Prefect's default 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # the stages log through the "lagcl" logger: route it through Prefect's handlers (terminal and UI)
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lagcl")
    # pipeline.runner=dask: Dask's scheduler and workers log every connection at INFO; keep their warnings only
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

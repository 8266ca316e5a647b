"""The DGL environment's process plumbing for the training stages (control, gcl; `StageSpec.trains`).

With `graph.backend: dgl` and no DGL in this Python (the main environment: PyPI's DGL 2.1.0 needs torch
<= 2.2.1), the stage template (tasks.base.run_stage) runs the same stage code in the DGL environment,
`python -m tasks.dgl_child` under $LAGCL_DGL_PYTHON (default `.venv-dgl/bin/python`, built by `make setup-dgl`): the
configuration and the fingerprints go in on stdin, the child writes the stage folder (lock, checkpoints,
manifest) exactly as an in-process run would, and its log lines are re-emitted through this process's "lagcl"
logger (so they reach Prefect). The parent never opens the stage folder, so it holds no lock the child would
wait on.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from lagcl.artifacts import is_complete
from lagcl.errors import ConfigError, LagclError

if TYPE_CHECKING:
    from tasks.base import Plan, StageRef

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("lagcl")

DGL_PYTHON_ENV = "LAGCL_DGL_PYTHON"
LOG_PREFIX = "@lagcl-log:"  # marks the child's log records in its output, level name follows
# set for the child: it is where the stage runs, even when its own DGL import fails (it reports that error
# instead of handing the stage on again)
IN_DGL_ENV = "LAGCL_IN_DGL_ENV"


def dgl_python() -> Path:
    """The interpreter of the DGL environment: $LAGCL_DGL_PYTHON, else the repository's .venv-dgl."""
    return Path(os.environ.get(DGL_PYTHON_ENV) or REPO_ROOT / ".venv-dgl" / "bin" / "python")


def runs_in_dgl_env(plan: Plan) -> bool:
    """True when this stage must run in the DGL environment: DGL asked for and not importable here."""
    return (plan.cfg.graph.backend == "dgl" and not os.environ.get(IN_DGL_ENV)
            and importlib.util.find_spec("dgl") is None)


def run_in_dgl_env(plan: Plan, stage: str) -> StageRef:
    """Run the training stage `stage` (control or gcl) under the DGL environment's Python and wait for it,
    streaming its output."""
    ref = plan.ref(stage)
    if is_complete(Path(ref.path)):
        return ref
    python = dgl_python()
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise ConfigError(f"graph.backend=dgl runs the {stage} stage with {python} (${DGL_PYTHON_ENV}), which does not "
                          "exist: run `make setup-dgl` first (it builds .venv-dgl), or set "
                          f"{DGL_PYTHON_ENV} to a Python with dgl==2.1.0 and this project installed")
    payload = json.dumps({"config": plan.cfg.model_dump(mode="json"), "fingerprints": plan.fingerprints,
                          "path": ref.path})
    log.info("%s: graph.backend=dgl, running the stage in the DGL environment (%s)", stage, python)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", IN_DGL_ENV: "1"}
    tail: deque[str] = deque(maxlen=30)
    bar_open = False  # a progress bar is drawn on stderr's last line: end it before the next log line
    # newline="": keep each piece's own terminator, so tqdm's "\r" redraws can be told from whole lines
    proc = subprocess.Popen([str(python), "-m", "tasks.dgl_child", "--plan-from-stdin", "--stage", stage], cwd=REPO_ROOT,
                            env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        for piece in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline=""):
            line = piece.rstrip("\r\n")
            if bar_open and not piece.endswith("\r"):
                sys.stderr.write("\n")
                bar_open = False
            if line.startswith(LOG_PREFIX):
                level, _, msg = line[len(LOG_PREFIX):].partition(":")
                log.log(logging.getLevelName(level) if level.isupper() else logging.INFO, "%s", msg)
                tail.append(msg)
            elif piece.endswith("\r"):  # a progress-bar redraw: show it live, keep it out of the log
                sys.stderr.write("\r" + line)
                sys.stderr.flush()
                bar_open = bool(line)
            elif line.strip():
                log.info("%s (DGL env): %s", stage, line)
                tail.append(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the child; its checkpoint lets the next run resume
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        raise LagclError(f"the {stage} stage in the DGL environment ({python}) failed with exit status {rc}; its last "
                         "output:\n  " + "\n  ".join(tail))
    if not is_complete(Path(ref.path)):
        raise LagclError(f"the {stage} stage in the DGL environment ({python}) exited cleanly but {ref.path} is not a "
                         "complete stage folder; rerun to resume it")
    return ref

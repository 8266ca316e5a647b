"""Register the deployments of conf/schedules.yaml with a Prefect server and serve them.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy      (what `make deploy` runs)

Every deployment whose engine is paid (a price for its model in llm.prices) must carry `llm.budget_usd` in its
`overrides` (or `llm.budget_usd=none`): a scheduled run nobody watches is the one that must not run away, so a
paid deployment without one is refused here, at registration, not at 2 a.m. (tasks/budget.py).

`flow.serve`-style: this process polls the server for scheduled and UI-triggered runs of its
deployments and executes them in subprocesses; stop it with Ctrl-C (schedules pause until it
serves again). For a fleet, use a process work pool and `prefect worker start` instead (README).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from lagcl.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_schedules(path: Path) -> list[dict]:
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("deployments")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} must hold a non-empty `deployments:` list")
    allowed = {"name", "cron", "interval_s", "timezone", "paused", "parameters", "description"}
    for e in entries:
        unknown = set(e) - allowed
        if unknown or "name" not in e:
            raise ConfigError(f"{path}: deployment entry {e.get('name', e)} has unknown keys {sorted(unknown)} "
                              f"or no name; allowed keys: {sorted(allowed)}")
        check_budget(path, e)
    return entries


def check_budget(path: Path, entry: dict) -> None:
    """A deployment of a paid engine carries llm.budget_usd (a number, or `none` on purpose)."""
    from flows.options import run_config
    from lagcl.llm.accounting import paid_price

    p = entry.get("parameters", {})
    cfg = run_config(p)
    if paid_price(cfg.engine, cfg.llm) is not None and cfg.llm.budget_usd is None:
        raise ConfigError(f"{path}: deployment {entry['name']} runs the paid engine {cfg.engine.name}/"
                          f"{cfg.engine.model} without a budget: add llm.budget_usd=<USD> to its overrides (DRY_RUN=1 "
                          f"with the same settings prints the estimate), or llm.budget_usd=none for no cap")


def build_deployments(entries: list[dict]):
    from prefect.schedules import Cron

    from flows.pipeline import lagcl_pipeline

    out = []
    for e in entries:
        kwargs = {"name": e["name"], "parameters": e.get("parameters", {}), "paused": e.get("paused", False),
                  "description": e.get("description"), "tags": ["lagcl", e.get("parameters", {}).get("data", "")]}
        if "cron" in e:
            kwargs["schedules"] = [Cron(e["cron"], timezone=e.get("timezone", "UTC"))]
        elif "interval_s" in e:
            kwargs["interval"] = e["interval_s"]
        out.append(lagcl_pipeline.to_deployment(**kwargs))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__)
    p.add_argument("--schedules", default=str(REPO_ROOT / "conf" / "schedules.yaml"))
    args = p.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("PREFECT_API_URL is not set: start the server with `make server` and run `make deploy` "
                         "(it sets PREFECT_API_URL=http://127.0.0.1:4200/api)")
    from prefect import serve

    serve(*build_deployments(load_schedules(Path(args.schedules))))


if __name__ == "__main__":
    main()

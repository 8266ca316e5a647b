"""The `lagcl-pipeline` Prefect flow: one run = one dataset + one configuration.

The stages run in order as cached Prefect tasks (flows/runner.py; on a Dask cluster with
`pipeline.runner=dask`, flows/dask.py); the run ends with its summary (flows/summary.py), what changed since
the previous run (flows/history.py) and the Prefect UI artifacts (flows/publish.py). `--dry-run` prices the
LLM stages instead (flows/dry_run.py).

    python -m flows.pipeline --data ml-100k --engine embedding --model lightgcn --set gcl.lr=0.002
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from prefect import flow
from prefect.states import Failed

from flows.dask import dask_stages, dask_task_runner
from flows.dry_run import dry_run
from flows.history import previous_run, record_run, what_changed
from flows.interrupt import stop_cleanly_on_signals
from flows.options import add_run_options, run_config, run_parameters
from flows.publish import publish_artifacts
from flows.runner import prefect_home, run_stages
from flows.summary import print_summary, product_lines
from lagcl.data.readers import check_raw_files
from lagcl.errors import LagclError, storage_error
from tasks.base import REPO_ROOT, Plan, make_plan


# the plan the command line built to check its options, handed to the flow run it starts with the same parameters
# (taken once: a deployment's or a schedule's run, in its own process, builds its own)
_checked: dict[str, Plan] = {}


def _key(params: dict) -> str:
    return repr(sorted(params.items()))


def run_plan(params: dict, dry_run: bool = False) -> Plan:
    """The plan of the flow's parameters (`run_parameters`): the one path from parameters to config and plan, for the
    command line and for the flow. A flow run started by `run_from_args` takes the plan it built (built once); one
    started by a deployment or a schedule builds it here."""
    params = run_parameters(params)
    plan = None if dry_run else _checked.pop(_key(params), None)
    return plan if plan is not None else make_plan(run_config(params, dry_run))


@flow(name="lagcl-pipeline", log_prints=True)
def lagcl_pipeline(data: str = "ml-100k", engine: str = "embedding", model: str = "lightgcn",
                   rank: str | None = None, ablation: str | None = None, from_stage: str | None = None,
                   overrides: list[str] | None = None) -> dict[str, str]:
    try:
        plan = run_plan(dict(data=data, engine=engine, model=model, rank=rank, ablation=ablation, overrides=overrides))
        cfg = plan.cfg
        # installed inside the flow, after Prefect's own SIGTERM capture, so that ours is the one in force
        with stop_cleanly_on_signals():
            if cfg.pipeline.runner == "dask":
                done = dask_stages.with_options(task_runner=dask_task_runner(cfg))(plan, from_stage)
            else:
                done = run_stages(plan, from_stage)
    except LagclError as exc:
        return Failed(message=str(exc), data=exc)  # the flow run's message, without a traceback
    except OSError as exc:
        err = storage_error(exc, None, prefect_home())
        if err is None:
            raise
        return Failed(message=str(err), data=err)
    changes = what_changed(plan, done, previous_run(plan))
    record_run(plan, done)  # before the summary, whose comparison of configurations shows this run
    print_summary(plan, done)
    print("\n".join(changes))
    publish_artifacts(plan, done, changes)
    print("\n".join(product_lines(plan, done)))  # last: where the product is and the command that shows it
    return done


def _local_server_settings() -> dict:
    """Runs go to the `make server` UI when it is up; otherwise Prefect starts a temporary server."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL"):
        return {}
    import urllib.request

    url = "http://127.0.0.1:4200/api"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as resp:
            if resp.status == 200:
                return {PREFECT_API_URL: url}
    except OSError:
        pass
    return {}


def check_prefect_home() -> None:
    """Prefect keeps its database and the stages' task results in PREFECT_HOME: a home it cannot write makes its
    temporary server fail to start and the run retry it for minutes; find out first, in one line."""
    home = Path(prefect_home())
    probe = home / f".lagcl-write-check-{os.getpid()}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        exc.filename = exc.filename or str(home)
        raise storage_error(exc, None, str(home)) or exc from None


def run_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # validate before starting Prefect, so a typo costs nothing
        params = run_parameters(args)
        plan = run_plan(params, args.dry_run)
        cfg = plan.cfg
        if not plan.store.is_complete("prepare", plan.fingerprints["prepare"]):
            check_raw_files(cfg.data, REPO_ROOT)
        if args.dry_run:
            return dry_run(plan)
        from prefect.settings import temporary_settings

        check_prefect_home()
        _checked[_key(params)] = plan  # the flow run below takes it (run_plan): the plan is built once
        try:
            with temporary_settings(_local_server_settings()):
                lagcl_pipeline(**params, from_stage=args.from_stage)
        finally:
            _checked.pop(_key(params), None)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # before the flow (planning, the raw digests) or Prefect's own home
        err = storage_error(exc, None, prefect_home())
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

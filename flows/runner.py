"""The stage loop: each enabled stage of the registry, in order, as a Prefect task whose cache key is the stage
fingerprint, so an unchanged stage shows as Cached and a rerun resumes at the first incomplete stage. A task
returns a StageRef (a folder path), never data; a cached StageRef whose folder is no longer complete is
recomputed."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.states import Failed

from flows import interrupt
from lagcl.artifacts import is_complete, read_manifest
from lagcl.errors import LagclError, storage_error
from lagcl.meta import RequestsMeta
from tasks.base import STAGES, Plan, StageRef


class _NoFailedStateEcho(logging.Filter):
    """Drops Prefect's "Task run failed with state: Failed(...)" record for a stage that returned a Failed state
    (run_stage below): it repeats the message of the "Finished in state Failed(...)" line beside it and, being
    logged with exc_info outside any exception, ends in a stray "NoneType: None" line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task run failed with state:")


logging.getLogger("prefect.task_runs").addFilter(_NoFailedStateEcho())


def prefect_home() -> str:
    """Where Prefect keeps its database and task results (PREFECT_HOME): named when it cannot be written."""
    from prefect.settings import PREFECT_HOME

    return str(PREFECT_HOME.value())


def _stage_key(context, parameters) -> str:  # Prefect cache_key_fn signature
    """The stage fingerprint, plus where its folder is: two cache roots never share a result."""
    stage, plan = parameters["stage"], parameters["plan"]
    where = hashlib.sha256(plan.ref(stage).path.encode()).hexdigest()[:8]
    return f"lagcl-{stage}-{plan.fingerprints[stage]}-{where}"


@task(name="stage", cache_key_fn=_stage_key, persist_result=True, task_run_name="{stage}")
def run_stage(stage: str, plan: Plan) -> StageRef:
    interrupt.current["stage"] = stage
    try:
        return STAGES[stage].runner(plan)
    except LagclError as exc:
        # a fault the user can fix (bad data, a locked stage): the task ends Failed with the one-line message
        # that `--dry-run` prints, and Prefect's engine logs no traceback for it (a returned state, not a raise)
        return Failed(message=str(exc), data=exc)
    except OSError as exc:
        err = storage_error(exc, plan.cfg.cache_dir, prefect_home())
        if err is None:
            raise
        return Failed(message=str(err), data=err)  # a read-only or full cache: one line, as above


def run_stages(plan: Plan, from_stage: str | None) -> dict[str, str]:
    """Each enabled stage in order, as a cached task; returns stage -> folder."""
    logger = get_run_logger()
    order = list(plan.fingerprints)
    if from_stage and from_stage not in order:
        raise LagclError(f"FROM={from_stage} is not a stage of this run; stages: {', '.join(order)}")
    forced = set(order[order.index(from_stage):]) if from_stage else set()
    done: dict[str, str] = {}
    for i, stage in enumerate(order):
        if stage in forced:
            discard(plan, stage)
        state = run_stage.with_options(refresh_cache=stage in forced)(stage, plan, return_state=True)
        ref = state.result()
        manifest = read_manifest(Path(ref.path))
        if manifest is None or not is_complete(Path(ref.path)):
            # Prefect remembered a result whose folder was removed or no longer matches its checksums
            logger.warning("%s: cached output is missing or corrupt; recomputing it", stage)
            ref = run_stage.with_options(refresh_cache=True)(stage, plan)
        elif state.is_completed() and state.name == "Cached" and (failed := RequestsMeta.of(manifest.get("meta", {})).failed):
            # a finished stage with failed requests: a rerun asks only those again, and every stage after
            # it is recomputed on the mended output
            logger.info("%s: retrying %d failed request(s) of the last run", stage, failed)
            ref = run_stage.with_options(refresh_cache=True)(stage, plan)
            if (read_manifest(Path(ref.path)) or {}).get("finished_at") != manifest.get("finished_at"):
                forced |= set(order[i + 1:])
        done[stage] = ref.path
    return done


def discard(plan: Plan, stage: str) -> None:
    """FROM=<stage>: remove the stage's folder so it recomputes from scratch. LLM answers stay in the
    response cache (cache/llm), so forcing a stage never pays twice for the same request."""
    folder = Path(plan.ref(stage).path)
    if folder.exists():
        with plan.store.stage(stage, plan.fingerprints[stage]):  # refuses while another run writes it
            pass
        shutil.rmtree(folder)

"""`pipeline.runner=dask`: the stages run in a subflow on prefect-dask's DaskTaskRunner, so their LLM and scoring
fan-out (tasks.base.stage_engine) reaches the cluster's workers."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow
from prefect.states import Failed

from flows.runner import run_stages
from lagcl.config import Config
from lagcl.errors import LagclError
from tasks.base import Fanout, Plan


@flow(name="lagcl-stages-dask", log_prints=True)
def dask_stages(plan: Plan, from_stage: str | None = None) -> dict[str, str]:
    """The stages of a `pipeline.runner=dask` run: a subflow whose task runner is prefect-dask's, so the
    stages' LLM and scoring fan-out (tasks.base.stage_engine) reaches the cluster's workers."""
    try:
        return run_stages(replace(plan, fanout=cluster_fanout()), from_stage)
    except LagclError as exc:
        return Failed(message=str(exc), data=exc)


def cluster_fanout() -> Fanout:
    """The executor of this subflow's Dask cluster (its DaskTaskRunner's client), handed to the stages through the
    plan (`Plan.fanout`, tasks.base.stage_engine): one part per worker thread."""
    from prefect.context import FlowRunContext

    client = FlowRunContext.get().task_runner.client
    return Fanout(client.get_executor(), sum(client.nthreads().values()), client.scheduler.address)


def dask_task_runner(cfg: Config):
    """DaskTaskRunner on `pipeline.dask_address`, or on a LocalCluster of `pipeline.dask_workers` processes."""
    from prefect_dask import DaskTaskRunner

    p = cfg.pipeline
    if p.dask_address:
        return DaskTaskRunner(address=p.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": p.dask_workers, "threads_per_worker": p.dask_threads_per_worker,
                                          "processes": True, "dashboard_address": None})

"""What the LLM stages of a planned run will ask (the planner's side of the cost model, lagcl/semantic/cost.py):
the requests each enabled stage declares in its registry entry (`StageSpec.requests`), added up, and the workload
the dry run (flows/dry_run.py) and the budget check (tasks/budget.py) price."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lagcl.config import Config
from lagcl.meta import PrepareMeta
from lagcl.augment import scoring_load
from lagcl.semantic.cost import Demand, ScoringLoad, Workload, operation_counts
from tasks.stages import STAGES, enabled_stages

if TYPE_CHECKING:
    from tasks.base import Plan


def planned_requests(interactions, n_users: int, n_items: int, cfg: Config,
                     load: ScoringLoad | None = None) -> dict[str, dict[str, int]]:
    """Stage -> the requests per LLM operation it will make on this data under `cfg`: what the registry entry of
    each stage the plan runs declares (`StageSpec.requests`, lagcl/semantic/cost.py; `enabled_stages`: switches
    and ablations). `load`: the scoring load when it is known already (else worked out from `interactions` if a
    stage needs it)."""
    demand = Demand(n_users, n_items, load if load is not None else lambda: scoring_load(interactions, n_items, cfg))
    return {name: STAGES[name].requests(cfg, demand) for name in enabled_stages(cfg)
            if STAGES[name].requests is not None}


def planned_counts(interactions, n_users: int, n_items: int, cfg: Config, load: ScoringLoad | None = None) -> dict[str, int]:
    """Requests per LLM operation of the stages the plan runs (`planned_requests`, added up)."""
    return operation_counts(planned_requests(interactions, n_users, n_items, cfg, load))


def workload(plan: Plan) -> Workload:
    """The planned run's LLM workload (`plan`: a Plan whose prepare stage has finished): the requests its stages
    declare, the scoring load, the request sizes `estimate` takes and the dataset's users."""
    cfg = plan.cfg
    interactions = plan.input("prepare", "interactions")
    n_users, n_items = (PrepareMeta.of(plan.meta("prepare")).stats[k] for k in ("users", "items"))
    sizes = dict(items_per_call=cfg.augment.items_per_call, group_batch=cfg.groups.batch_size,
                 target_group_size=cfg.groups.target_group_size, history=cfg.profiles.history)
    load = scoring_load(interactions, n_items, cfg)
    return Workload(planned_requests(interactions, n_users, n_items, cfg, load), load, sizes, n_users)

"""The stage registry: one declared contract per stage (docs/stages.md).

A `StageSpec` says what a stage is to the rest of the code: the function that runs it, the stages it cannot run
without and those it reads when they are there, the config sections and code version in its fingerprint (and the
extras beside them), the tables it reads and writes, and the manifest meta other code reads back. The flow, the
planner (`tasks.base.make_plan`), the config's `pipeline.stages` switches and the CLI all read `STAGES`; nothing
else lists the stages.

This module imports no stage module: `run` is named as "module:function" and resolved on first call, so the
stage modules can import `tasks.base` (which imports this) without a cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lagcl.config import Config
from lagcl.meta import EvaluateMeta, Headline, PrepareMeta, RequestsMeta
from lagcl.semantic.cost import Demand, group_requests, profile_requests, score_requests

if TYPE_CHECKING:
    from tasks.base import Plan, StageRef


def rank_enabled(cfg: Config) -> bool:
    """Whether the gcl stage tries the rank level (eq. 7-12): `rank.enabled` and not the no-rank ablation."""
    return cfg.rank.enabled and cfg.pipeline.ablation != "no-rank"


# --- fingerprint extras: what a stage's result depends on beyond its config sections ----------------------------
# each returns "key=value" (joined with ";" after `seed=`) or None; the order on a spec is the order hashed
Extra = Callable[["Plan"], "str | None"]


def rank_tried(plan: Plan) -> str:
    return f"rank={rank_enabled(plan.cfg)}"


def raw_digest(plan: Plan) -> str:
    """The raw data itself: new or changed files recompute prepare and what follows."""
    from lagcl.data.digest import inputs_digest

    return f"raw={inputs_digest(plan.inputs)}"


def cold_split(plan: Plan) -> str:
    """The cold/warm split of the metrics."""
    return f"cold={plan.cfg.augment.cold_threshold}"


def train_seed(plan: Plan) -> str | None:
    return f"train_seed={plan.cfg.train_seed}" if plan.cfg.train_seed is not None else None


def prompt_ids(plan: Plan) -> str | None:
    """An LLM engine's prompts name users and items by the dataset's own ids since issue 14 (lagcl.semantic.base):
    other prompts, other replies. The embedding engine reads no ids, so its folders stay valid."""
    return None if plan.cfg.engine.name == "embedding" else "ids=raw"


def prompt_style(plan: Plan) -> str | None:
    """Other prompts give other scores; paper-style runs keep their folders (no extra)."""
    llm = plan.cfg.llm
    if llm.prompt_style == "paper":
        return None
    return f"prompt_style={llm.prompt_style},{llm.compact_items_per_call},{llm.compact_summary_words}"


def groups_by_engine(cfg: Config) -> bool:
    """Whether the groups stage asks the engine (eq. 5-6) for a kind: with `groups.source: files` and both files
    given it reads neither the profiles stage nor the engine section."""
    return bool(cfg.groups.engine_kinds)


def group_prompt_ids(plan: Plan) -> str | None:
    return prompt_ids(plan) if groups_by_engine(plan.cfg) else None


def group_files(plan: Plan) -> str | None:
    """`groups.source: files`: the files' contents (SHA-256), never where they are, and those of the id map's
    item file (lagcl/group_files.py)."""
    if not plan.group_inputs:
        return None
    return "group_files=" + ",".join(f"{role}:{f.sha256}" for role, f in sorted(plan.group_inputs.items()))


def pair_reuse(plan: Plan) -> str | None:
    """Scores reused pair by pair (llm.reuse_pair_scores, the default) may have been given beside other items than
    a fresh request lists: turned off, the stage recomputes with every request in full. The embedding engine
    reuses nothing, and runs with reuse on keep their folders (no extra)."""
    if plan.cfg.engine.name == "embedding" or plan.cfg.llm.reuse_pair_scores:
        return None
    return "pair_scores=fresh"


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: str  # "module:function", resolved by `runner`
    sections: tuple[str, ...]  # config sections in the fingerprint (and recorded in the manifest)
    version: str  # changes when the stage's code changes what it writes
    requires: dict[str, str] = field(default_factory=dict)  # hard upstream -> what this stage takes from it
    optional: tuple[str, ...] = ()  # upstreams read when they are on and finished
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # upstream -> its tables this stage reads
    writes: tuple[str, ...] = ()  # this stage's tables: `StageDir.finish` refuses to finish without any of them
    may_write: tuple[str, ...] = ()  # tables only some runs write (no cold user: no `scores`; no grid: no `grid`)
    extras: tuple[Extra, ...] = ()
    # a section hashed only while the predicate holds: a setting the stage does not use must not retrain it
    only_if: dict[str, Callable[[Config], bool]] = field(default_factory=dict)
    # an upstream read, hashed and required only while the predicate holds (groups from files need no profiles)
    needs_if: dict[str, Callable[[Config], bool]] = field(default_factory=dict)
    meta: type | None = None  # the typed view of the manifest meta other code reads back
    timing: str | None = None  # the meta key the template writes the stage's seconds to
    trains: bool = False  # a training stage: with graph.backend=dgl and no DGL here it runs in the DGL environment
    # an LLM stage: operation -> the requests it makes on this data under this config (lagcl/semantic/cost.py;
    # the dry-run estimate and the budget check add up those of the enabled stages, tasks.workload.planned_requests)
    requests: Callable[[Config, Demand], dict[str, int]] | None = None

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every stage whose fingerprint is in this one's, in execution order."""
        ups = {*self.requires, *self.optional, *self.reads}
        return tuple(s for s in STAGES if s in ups)

    def upstream_for(self, cfg: Config) -> tuple[str, ...]:
        """The upstreams this run's configuration reads (`upstream` less those `needs_if` turns off)."""
        return tuple(s for s in self.upstream if self.needs_if.get(s, lambda _: True)(cfg))

    def requires_for(self, cfg: Config) -> dict[str, str]:
        return {s: what for s, what in self.requires.items() if self.needs_if.get(s, lambda _: True)(cfg)}

    def hashed_sections(self, cfg: Config) -> tuple[str, ...]:
        return tuple(s for s in self.sections if self.only_if.get(s, lambda _: True)(cfg))

    def extra(self, plan: Plan) -> str:
        return ";".join([f"seed={plan.cfg.seed}", *(x for f in self.extras if (x := f(plan)) is not None)])

    @property
    def runner(self) -> Callable[[Plan], StageRef]:
        module, _, fn = self.run.partition(":")
        return getattr(importlib.import_module(module), fn)


# the order is the execution order; a stage's version changes when its code changes what it writes
# (rerank 2: the classifier head is drawn from `seed`, not from the process's random state; augment 2: quality
# figures against validation positives only; gcl 2 / evaluate 2: the validation gate and the control;
# control 2 / gcl 3: per-user tables and the gate's noise rule, lagcl/stats.py; evaluate 3: the
# `recommendations` table; augment 3: candidate samples keyed by raw ids, stable when items are added; groups 3:
# the `group_members` table, each member's profile digest, what groups.incremental compares against; evaluate 4:
# the `recommendations` table leaves out the items of recommend.exclude, by default every rated one; evaluate 5:
# chain.png, the meta's `fusion` (the headline's alpha/tau or its fallback) and `cannot_move`)
STAGES: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("prepare", "tasks.prepare:run", ("data",), "1", extras=(raw_digest,),
              writes=("interactions", "users", "items"), meta=PrepareMeta),
    StageSpec("profiles", "tasks.profiles:run", ("data", "engine", "profiles"), "2",
              reads={"prepare": ("interactions", "users", "items")}, writes=("user_profiles", "item_profiles"),
              extras=(prompt_ids,), meta=RequestsMeta, timing="seconds_this_run", requests=profile_requests),
    StageSpec("augment", "tasks.augment:run", ("engine", "augment"), "3",
              requires={"profiles": "scores cold users' candidates from the profiles stage's profiles"},
              reads={"prepare": ("interactions", "users", "items"), "profiles": ("user_profiles", "item_profiles")},
              writes=("augmented",), may_write=("scores",), extras=(prompt_ids, prompt_style, pair_reuse), meta=RequestsMeta, timing="seconds_this_run",
              requests=score_requests),
    StageSpec("groups", "tasks.groups:run", ("engine", "groups"), "3",
              requires={"profiles": "groups the profiles stage's profiles"},
              reads={"prepare": ("users", "items"), "profiles": ("user_profiles", "item_profiles")},
              writes=("user_groups", "item_groups", "group_partitions", "group_similarity", "group_members"),
              extras=(group_prompt_ids, group_files),
              only_if={"engine": groups_by_engine}, needs_if={"profiles": groups_by_engine},
              meta=RequestsMeta,
              timing="seconds_this_run", requests=group_requests),
    StageSpec("control", "tasks.control:run", ("gcl", "graph", "evaluate"), "2",
              reads={"prepare": ("interactions", "users", "items")},
              writes=("cf_topk", "metrics", "per_user", "epochs"), extras=(cold_split, train_seed), meta=Headline,
              timing="stage_seconds", trains=True),
    StageSpec("gcl", "tasks.gcl:run", ("gcl", "rank", "graph", "evaluate", "data_level", "gate"), "3",
              requires={"control": "measures every level against the control stage"},
              optional=("augment", "groups"),
              reads={"prepare": ("interactions", "users", "items"), "augment": ("scores", "augmented"),
                     "groups": ("user_groups", "item_groups"), "control": ("metrics", "per_user", "cf_topk")},
              writes=("cf_topk", "levels", "metrics", "per_user", "epochs"),
              extras=(rank_tried, cold_split, train_seed),
              # the rank section (its lambda_cl, w_h, temperatures...) is read only by the rank-level variant
              # (lagcl/train.py batch_losses, lagcl/chain/fit.py fit_variant): untried, it must not retrain the stage
              only_if={"rank": rank_enabled},
              meta=Headline, timing="stage_seconds", trains=True),
    StageSpec("rerank", "tasks.rerank:run", ("rerank",), "2",
              requires={"gcl": "reranks the gcl stage's cf_topk"}, optional=("profiles", "augment"),
              reads={"prepare": ("interactions", "users", "items"), "profiles": ("user_profiles", "item_profiles"),
                     "augment": ("augmented",), "gcl": ("cf_topk",)},
              writes=("rerank_users", "rerank_scores"), may_write=("rerank_train",), extras=(train_seed,),
              timing="stage_seconds"),
    StageSpec("evaluate", "tasks.evaluate:run", ("evaluate", "rerank", "fusion", "gate", "recommend"), "5",
              requires={"gcl": "needs the gcl stage's cf_topk"}, optional=("control", "rerank"),
              reads={"prepare": ("interactions", "users", "items"), "control": ("per_user",),
                     "gcl": ("cf_topk", "metrics"), "rerank": ("rerank_scores", "rerank_users")},
              writes=("metrics", "recommendations"), may_write=("grid",), extras=(cold_split, train_seed), meta=EvaluateMeta,
              timing="stage_seconds"),
)}


def check_switches(switches: dict[str, Any]) -> None:
    """`pipeline.stages` names only stages of the registry (prepare always runs)."""
    from lagcl.errors import ConfigError

    known = [s for s in STAGES if s != "prepare"]
    unknown = sorted(set(switches) - set(known))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown} in pipeline.stages; known stages: {', '.join(known)}")


def enabled_stages(cfg: Config) -> list[str]:
    """Stages this run executes, after ablation switches (Table 3)."""
    check_switches(cfg.pipeline.stages)
    on = {"prepare": True, **cfg.pipeline.stages}
    ablation = cfg.pipeline.ablation
    if ablation == "no-data":
        on["augment"] = False
    elif ablation == "no-rerank":
        on["rerank"] = False
    return [s for s in STAGES if on.get(s, True)]

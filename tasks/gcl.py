"""Stage 4: the levels, chosen on validation against the control (docs/design.md 13) -> the chosen model's
checkpoint and cf_topk, `levels` (the chain control -> + data -> + rank, each step kept or turned down with
its reason), `metrics` of every trained variant (valid/test, both protocols, all/cold/warm users), `epochs`
(eq. 7-12). The data level is tried at each `data_level.weights` strength with the rank level off, the rank
level on top of what was kept (lagcl/chain/levels.py, lagcl/chain/rule.py). With `graph.backend: dgl` and no
DGL here the template runs it in the DGL environment (tasks/dgl.py)."""

from __future__ import annotations

from pathlib import Path

from lagcl.chain.levels import Control, Interactions, train_levels
from lagcl.meta import Headline
from tasks.base import Plan, StageRef, log, rank_enabled, run_stage
from tasks.groups import source_label

STAGE = "gcl"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def training_data(plan: Plan) -> Interactions:
    """The prepare stage's tables, as the training stages read them."""
    return Interactions(plan.input("prepare", "interactions"), plan.input("prepare", "items"),
                        plan.input("prepare", "users").height)


def _build(plan: Plan, sd) -> dict:
    rank_on = rank_enabled(plan.cfg)
    control = Control(plan.input("control", "metrics"), plan.input("control", "per_user"),
                      plan.input("control", "cf_topk"), Path(plan.ref("control").path) / "model.pt")
    groups = ((plan.input("groups", "user_groups", optional=True), plan.input("groups", "item_groups", optional=True))
              if rank_on else (None, None))
    return train_levels(sd, plan.cfg, training_data(plan), control, rank_on, groups,
                        plan.input("augment", "scores", optional=True),
                        plan.input("augment", "augmented", optional=True),
                        source_label(plan.meta("groups")) if "groups" in plan.fingerprints else None)


def _summary(meta: dict) -> None:
    h = Headline.of(STAGE, meta)
    log.info("gcl %s: chosen '%s', test Recall@20 %.4f NDCG@20 %.4f (control %.4f / %.4f), valid Recall@20 %.4f",
             h.backbone, h.variant, h.test_recall, h.test_ndcg, h.control_test_recall, h.control_test_ndcg,
             h.valid_recall)

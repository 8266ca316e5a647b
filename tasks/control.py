"""Stage: the control (docs/design.md 13) -> the configured backbone trained with no level on (no augmentation,
its own losses, same seed and data): model.pt, cf_topk, metrics (valid/test, both protocols, all/cold/warm
users), per_user (each user's Recall/NDCG@20 on both splits: the paired tests), epochs. Its fingerprint
depends only on the data, the backbone and the seed, so every level, ablation and rank setting of a backbone
shares one control, and a rerun reuses it."""

from __future__ import annotations

from lagcl.chain.levels import train_control
from lagcl.meta import Headline
from tasks.base import Plan, StageRef, log, run_stage
from tasks.gcl import training_data

STAGE = "control"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, lambda plan, sd: train_control(sd, plan.cfg, training_data(plan)), _summary)


def _summary(meta: dict) -> None:
    h = Headline.of(STAGE, meta)
    log.info("control %s: best epoch %d, valid Recall@20 %.4f, test Recall@20 %.4f NDCG@20 %.4f", h.backbone,
             meta["best_epoch"], h.valid_recall, h.test_recall, h.test_ndcg)

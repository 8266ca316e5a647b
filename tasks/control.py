"""Stage: the control (DESIGN.md 13) -> the configured backbone trained with no level on (no augmentation,
its own losses, same seed and data): model.pt, cf_topk, metrics (valid/test, both protocols, all/cold/warm
users), per_user (each user's Recall/NDCG@20 on both splits: the paired tests), epochs. Its fingerprint
depends only on the data, the backbone and the seed, so every level, ablation and rank setting of a backbone
shares one control, and a rerun reuses it."""

from __future__ import annotations

import time
from pathlib import Path

from lagcl.artifacts import read_table
from lagcl.gate import Variant, fit_variant, headline
from tasks.base import Plan, StageRef, log
from tasks.gcl import (epochs_table, fit_context, metrics_table, per_user_table, run_in_dgl_env, runs_in_dgl_env,
                       write_model)

STAGE = "control"


def run(plan: Plan) -> StageRef:
    if runs_in_dgl_env(plan):
        return run_in_dgl_env(plan, STAGE)
    return _run(plan)


def _run(plan: Plan) -> StageRef:
    cfg = plan.cfg
    ref = plan.ref(STAGE)
    prep = Path(plan.upstream(STAGE)["prepare"].path)
    with plan.stage_dir(STAGE) as sd:
        if sd.complete:
            return ref
        t0 = time.perf_counter()
        interactions = read_table(prep, "interactions")
        items = read_table(prep, "items")
        n_users, n_items = read_table(prep, "users").height, items.height
        ctx, _ = fit_context(plan, interactions, items, n_users, n_items, sd.file_path("checkpoints"),
                             with_groups=False)
        f = fit_variant(ctx, Variant("control"))
        write_model(sd, plan, f)
        sd.write_table("metrics", metrics_table([f]))
        sd.write_table("per_user", per_user_table([f]))
        sd.write_table("epochs", epochs_table([f]))
        meta = {"backbone": cfg.gcl.backbone, "variant": "control", "rank_level": False, "data_level": False,
                "best_epoch": f.result.best_epoch, "epochs_run": f.result.epochs.height,
                "resumed_from_epoch": f.result.resumed_from, **headline(f),
                "train_seconds": round(f.result.train_seconds, 3), "data": f.data.info,
                "stage_seconds": round(time.perf_counter() - t0, 3)}
        sd.finish(meta)
    log.info("control %s: best epoch %d, valid Recall@20 %.4f, test Recall@20 %.4f NDCG@20 %.4f", cfg.gcl.backbone,
             meta["best_epoch"], meta["valid_recall@20"], meta["test_recall@20"], meta["test_ndcg@20"])
    return ref

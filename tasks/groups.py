"""Stage 3: semantic groups of users and of items (eq. 5-6)."""

from __future__ import annotations

import polars as pl

from lagcl.groups import build_groups, genre_purity
from lagcl.profiles import raw_labels, read_profiles
from lagcl.semantic import make_engine
from tasks.base import Plan, StageRef, log, run_stage

STAGE = "groups"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> dict:
    cfg = plan.cfg
    g = cfg.groups
    engine = make_engine(cfg, plan.store.root, STAGE)
    items = plan.input("prepare", "items")
    labels = {"user": raw_labels(plan.input("prepare", "users"), "user"), "item": raw_labels(items, "item")}
    out, stats = {}, {}
    for kind in ("user", "item"):
        profiles = read_profiles(plan.input("profiles", f"{kind}_profiles"), kind, labels[kind])
        out[kind] = build_groups(engine, kind, profiles, g.batch_size, g.target_group_size, g.tau_sim,
                                 g.candidate_pairs_k, cfg.seed, sd,
                                 on_batch=lambda b, n, kind=kind: log.info("groups: %s batch %d/%d", kind, b, n))
        stats[kind] = out[kind].stats
    stats["item"]["genre_purity"] = genre_purity(out["item"].assignment, items)
    sd.write_table("user_groups", out["user"].assignment)
    sd.write_table("item_groups", out["item"].assignment)
    sd.write_table("group_partitions", pl.concat([out[k].partitions for k in ("user", "item")]))
    sd.write_table("group_similarity", pl.concat([out[k].similarity for k in ("user", "item")]))
    return {"user": stats["user"], "item": stats["item"],
            "failed": sum(s["similarity_failed"] for s in stats.values()), "engine": engine.name,
            "model": engine.model, "approximate": engine.approximate, "usage": engine.usage().__dict__}


def _summary(meta: dict) -> None:
    for kind in ("user", "item"):
        s = meta[kind]
        log.info("groups %s: %d groups from %d partition groups (%d merged pairs of %d rated); sizes min %d / median "
                 "%.0f / max %d; %d singleton ids; same-group share %.3f", kind, s["groups"], s["partition_groups"],
                 s["merged_pairs"], s["rated_pairs"], s["size_min"], s["size_median"], s["size_max"],
                 s["singleton_ids"], s["same_group_share"])
    log.info("groups: by %s/%s%s in %.1fs", meta["engine"], meta["model"],
             " (approximation)" if meta["approximate"] else "", meta["seconds_this_run"])

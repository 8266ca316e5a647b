"""Stage 3: semantic groups of users and of items (eq. 5-6)."""

from __future__ import annotations

import time

import polars as pl

from lagcl.groups import build_groups, genre_purity
from lagcl.profiles import raw_labels
from lagcl.semantic import make_engine
from lagcl.semantic.base import Profile
from tasks.base import Plan, StageRef, finished, log

STAGE = "groups"


def run(plan: Plan) -> StageRef:
    cfg, store = plan.cfg, plan.store
    g = cfg.groups
    ref = plan.ref(STAGE)
    up = plan.upstream(STAGE)
    with plan.stage_dir(STAGE) as sd:
        if finished(sd):
            return ref
        t0 = time.time()
        engine = make_engine(cfg, store.root, STAGE)
        items = store.read_table("prepare", up["prepare"].fingerprint, "items")
        labels = {"user": raw_labels(store.read_table("prepare", up["prepare"].fingerprint, "users"), "user"),
                  "item": raw_labels(items, "item")}
        out, stats = {}, {}
        for kind in ("user", "item"):
            table = store.read_table("profiles", up["profiles"].fingerprint, f"{kind}_profiles")
            profiles = [Profile(kind, i, s, r, label=labels[kind].get(i, ""))
                        for i, s, r in table.select(kind, "summarization", "reasoning").iter_rows()]
            out[kind] = build_groups(engine, kind, profiles, g.batch_size, g.target_group_size, g.tau_sim,
                                     g.candidate_pairs_k, cfg.seed, sd,
                                     on_batch=lambda b, n, kind=kind: log.info("groups: %s batch %d/%d", kind, b, n))
            stats[kind] = out[kind].stats
        stats["item"]["genre_purity"] = genre_purity(out["item"].assignment, items)
        sd.write_table("user_groups", out["user"].assignment)
        sd.write_table("item_groups", out["item"].assignment)
        sd.write_table("group_partitions", pl.concat([out[k].partitions for k in ("user", "item")]))
        sd.write_table("group_similarity", pl.concat([out[k].similarity for k in ("user", "item")]))
        failed = sum(s["similarity_failed"] for s in stats.values())
        meta = {"user": stats["user"], "item": stats["item"], "failed": failed, "engine": engine.name,
                "model": engine.model, "approximate": engine.approximate, "usage": engine.usage().__dict__,
                "seconds_this_run": round(time.time() - t0, 2)}
        sd.finish(meta)
    for kind in ("user", "item"):
        s = meta[kind]
        log.info("groups %s: %d groups from %d partition groups (%d merged pairs of %d rated); sizes min %d / median "
                 "%.0f / max %d; %d singleton ids; same-group share %.3f", kind, s["groups"], s["partition_groups"],
                 s["merged_pairs"], s["rated_pairs"], s["size_min"], s["size_median"], s["size_max"],
                 s["singleton_ids"], s["same_group_share"])
    log.info("groups: by %s/%s%s in %.1fs", engine.name, engine.model,
             " (approximation)" if engine.approximate else "", meta["seconds_this_run"])
    return ref

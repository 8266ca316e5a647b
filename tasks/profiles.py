"""Stage 1: a profile (summarization, reasoning) for every user and item (eq. 1)."""

from __future__ import annotations

import time

from lagcl.profiles import profile_requests, profile_tables, run_profiles
from tasks.base import Plan, StageRef, finished, log, semantic_engine

STAGE = "profiles"


def run(plan: Plan) -> StageRef:
    cfg = plan.cfg
    ref = plan.ref(STAGE)
    prep = plan.upstream(STAGE)["prepare"]
    with plan.stage_dir(STAGE) as sd:
        if finished(sd):
            return ref
        with semantic_engine(plan, STAGE) as engine:
            t0 = time.time()
            store = plan.store
            inter, users, items = (store.read_table("prepare", prep.fingerprint, t)
                                   for t in ("interactions", "users", "items"))
            requests = profile_requests(inter, users, items, history=cfg.profiles.history,
                                        item_rating_counts=cfg.profiles.item_rating_counts)
            res = run_profiles(engine, requests, sd, cfg.profiles.shard_size,
                               on_shard=lambda done, total: log.info("profiles: %d/%d", done, total))
            user_profiles, item_profiles = profile_tables(sd, engine)
            sd.write_table("user_profiles", user_profiles)
            sd.write_table("item_profiles", item_profiles)
            meta = {"users": user_profiles.height, "items": item_profiles.height, "requested": res.requested,
                    "answered_this_run": res.answered, "resumed": res.skipped, "failed": res.failed,
                    "engine": engine.name, "model": engine.model, "approximate": engine.approximate,
                    "usage": engine.usage().__dict__, "seconds_this_run": round(time.time() - t0, 2)}
            sd.finish(meta)
    log.info("profiles: %d users, %d items (%d answered now, %d resumed, %d failed) by %s/%s%s in %.1fs",
             meta["users"], meta["items"], res.answered, res.skipped, res.failed, engine.name, engine.model,
             " (approximation)" if engine.approximate else "", meta["seconds_this_run"])
    return ref


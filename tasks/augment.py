"""Stage 2: augmented positive and negative interactions for cold-start users (eq. 2-4)."""

from __future__ import annotations

import time

from lagcl.augment import (AUGMENTED_SCHEMA, SCORES, SCORES_SCHEMA, augment_quality, candidate_samples, chunks,
                           cold_users, run_scoring, select_augmented)
from lagcl.meta import RequestsMeta
from lagcl.profiles import raw_labels, read_profiles
from tasks.base import Plan, StageRef, log, run_stage, stage_engine

STAGE = "augment"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> dict:
    cfg = plan.cfg
    a = cfg.augment
    engine = stage_engine(plan, STAGE)
    t0 = time.time()
    inter, items, raw_users = (plan.input("prepare", t) for t in ("interactions", "items", "users"))
    user_profiles, item_profiles = (read_profiles(plan.input("profiles", f"{k}_profiles"), k, raw_labels(raw, k))
                                    for k, raw in (("user", raw_users), ("item", items)))
    # a user or item whose profile failed (the profiles stage asks for it again next run) cannot be put in a
    # prompt: it is left out of this run's sampling, counted and said, and the next run's profiles bring it back
    profiled = {p.id for p in user_profiles}, {p.id for p in item_profiles}
    cold = cold_users(inter, a.cold_threshold)
    users = [u for u in cold if u in profiled[0]]
    pool = [i for i in items["item"].to_list() if i in profiled[1]]
    unprofiled = {"users": len(cold) - len(users), "items": items.height - len(pool)}
    if any(unprofiled.values()):
        log.warning("augment: %d cold user(s) and %d item(s) have no profile (failed in the profiles stage) and "
                    "are left out; rerun the pipeline: profiles asks for them again, then augment reruns",
                    unprofiled["users"], unprofiled["items"])
    samples = candidate_samples(inter, pool, users, a.n_candidates, cfg.seed,
                                user_keys=dict(zip(raw_users["user"].to_list(), raw_users["raw_id"].to_list())),
                                item_keys=dict(zip(items["item"].to_list(), items["raw_id"].to_list())))
    todo = chunks(samples, a.items_per_call)
    res = run_scoring(engine, todo, user_profiles, item_profiles, sd, a.shard_size,
                      on_shard=lambda done, total: log.info("augment: scored %d/%d cold users", done, total))
    t_score = time.time() - t0
    scores = sd.read_shards(SCORES, SCORES_SCHEMA)
    augmented = select_augmented(scores, {k: len(v) for k, v in samples.items()}, a.top_fraction)
    sd.write_table("augmented", augmented.select(list(AUGMENTED_SCHEMA)))
    return {"cold_users": len(users), "without_profile": unprofiled, "requests": res.requests, "sent_this_run": res.sent,
            "resumed": res.skipped, "scores": scores.height,
            "augmented_pos": int((augmented["sign"] == 1).sum()),
            "augmented_neg": int((augmented["sign"] == -1).sum()),
            "quality": augment_quality(augmented, scores, inter, items),
            **RequestsMeta.of_engine(engine, res.failed).as_meta(), "seconds_scoring": round(t_score, 2)}


def _summary(meta: dict) -> None:
    quality = meta["quality"]
    usage = meta.get("usage") or {}
    pairs = (f"; score pairs {usage['score_pairs_sent']} asked, {usage['score_pairs_reused']} reused"
             if "score_pairs_reused" in usage else "")
    log.info("augment: %d cold users, %d requests (%d sent now, %d resumed, %d failed%s); %d augmented positives, "
             "%d negatives; by %s/%s%s in %.1fs", meta["cold_users"], meta["requests"], meta["sent_this_run"],
             meta["resumed"], meta["failed"], pairs, meta["augmented_pos"], meta["augmented_neg"], meta["engine"],
             meta["model"], " (approximation)" if meta["approximate"] else "", meta["seconds_this_run"])
    log.info("augment quality: positive precision %.4f vs random %.4f (lift %.2f); negatives on held-out "
             "positives %.4f vs random %.4f (ratio %.2f); dislike lean neg %s / random %s / pos %s",
             quality["pos_precision"], quality["pos_random_precision"], quality["pos_lift"],
             quality["neg_heldout_precision"], quality["neg_random_precision"], quality["neg_heldout_ratio"],
             quality.get("dislike_lean_neg"), quality.get("dislike_lean_random"), quality.get("dislike_lean_pos"))

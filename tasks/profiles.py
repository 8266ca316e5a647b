"""Stage 1: a profile (summarization, reasoning) for every user and item (eq. 1)."""

from __future__ import annotations

from lagcl.meta import RequestsMeta
from lagcl.profiles import profile_requests, profile_tables, run_profiles
from tasks.base import Plan, StageRef, log, run_stage, stage_engine

STAGE = "profiles"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> dict:
    engine = stage_engine(plan, STAGE)
    inter, users, items = (plan.input("prepare", t) for t in ("interactions", "users", "items"))
    requests = profile_requests(inter, users, items, history=plan.cfg.profiles.history,
                                item_rating_counts=plan.cfg.profiles.item_rating_counts)
    res = run_profiles(engine, requests, sd, plan.cfg.profiles.shard_size,
                       on_shard=lambda done, total: log.info("profiles: %d/%d", done, total))
    user_profiles, item_profiles = profile_tables(sd, engine)
    sd.write_table("user_profiles", user_profiles)
    sd.write_table("item_profiles", item_profiles)
    return {"users": user_profiles.height, "items": item_profiles.height, "requested": res.requested,
            "answered_this_run": res.answered, "resumed": res.skipped,
            **RequestsMeta.of_engine(engine, res.failed).as_meta()}


def _summary(meta: dict) -> None:
    log.info("profiles: %d users, %d items (%d answered now, %d resumed, %d failed) by %s/%s%s in %.1fs",
             meta["users"], meta["items"], meta["answered_this_run"], meta["resumed"], meta["failed"], meta["engine"],
             meta["model"], " (approximation)" if meta["approximate"] else "", meta["seconds_this_run"])

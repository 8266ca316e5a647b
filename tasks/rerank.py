"""Stage 5: reranker training data (eq. 13-15), training (eq. 16), scores of every (u, v in C_u) (eq. 18)
(lagcl/rerank/score.py). The fusion settings are not hashed here (the `fusion` section is the evaluate stage's):
other ones reuse this folder as it is."""

from __future__ import annotations

from lagcl.rerank import score
from tasks.base import Finish, Plan, StageRef, log, run_stage

STAGE = "rerank"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> Finish:
    out = score.train_and_score(sd, plan.cfg, score.RerankInputs(
        *(plan.input("prepare", t) for t in ("interactions", "users", "items")), plan.input("gcl", "cf_topk"),
        plan.input("augment", "augmented", optional=True),
        plan.input("profiles", "user_profiles", optional=True),
        plan.input("profiles", "item_profiles", optional=True)))
    return Finish(out.meta, out.files, summary=out.scored, timed=out.timed)


def _summary(meta: dict) -> None:
    if meta.get("style") == "late":
        log.info("rerank: %d pairs scored in %.1f s (encoding %.1f s, head training %.1f s)", meta["scored_pairs"],
                 meta["score_seconds"], meta["encode_seconds"], meta["train_seconds"])
    else:
        log.info("rerank: %d pairs scored in %.1f s (training %.1f s)", meta["scored_pairs"], meta["score_seconds"],
                 meta["train_seconds"])

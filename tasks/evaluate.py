"""Stage 6: base CF and CF + reranker side by side (eq. 19-21), all-rank Recall/NDCG, the rerank level's gate,
the recommendations, report and plots (lagcl/chain/rerank_level.py)."""

from __future__ import annotations

from lagcl.chain.rerank_level import EvaluateInputs, evaluate
from lagcl.chain.text import format_chain
from lagcl.meta import EvaluateMeta
from tasks.base import Plan, StageRef, log, run_stage

STAGE = "evaluate"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> dict:
    scores = plan.input("rerank", "rerank_scores", optional=True)
    x = EvaluateInputs(*(plan.input("prepare", t) for t in ("interactions", "users", "items")),
                       plan.input("gcl", "cf_topk"), scores,
                       plan.input("rerank", "rerank_users", optional=True) if scores is not None else None,
                       plan.input("control", "per_user", optional=True), plan.meta("gcl"),
                       plan.input("gcl", "metrics", optional=True), plan.meta("rerank"))
    return evaluate(sd, plan.cfg, x, plan.fingerprints)


def _summary(meta: dict) -> None:
    e = EvaluateMeta.of(meta)
    for line in format_chain(e.headline.levels):
        log.info("evaluate chain:%s", line)
    log.info("evaluate: %s test Recall@20 %.4f NDCG@20 %.4f (CF %.4f / %.4f) over %d users, %s",
             e.headline.variant, e.headline.test_recall, e.headline.test_ndcg, e.cf_test_recall, e.cf_test_ndcg,
             e.users, f"fallback {e.fallback}" if e.fallback else f"alpha {e.alpha:.2f} tau {e.tau:g}")
    if e.cannot_move:
        log.info("evaluate: %s cannot move: only the top %d CF candidates are reranked",
                 ", ".join(e.cannot_move), e.candidates)

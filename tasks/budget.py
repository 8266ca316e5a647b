"""The run's LLM budget (docs/design.md 16): `llm.budget_usd` caps what the LLM stages of the planned run cost
together, `llm.stage_budget_usd[stage]` what one of them costs, each counted over every attempt.

What a stage of this plan has cost is its entry in the spend ledger of the response cache (`cache/llm`): every
answer's cost is added to the stage folder's entry in the transaction that stores the answer, whichever attempt
paid it, so a run stopped by its budget, a crash or Ctrl-C and then resumed counts what it paid before. A folder
finished before the ledger existed counts what its manifest recorded. A stage's client starts with what the
run's stages have cost so far (`Budget.run_paid_usd`) and may pay what is left of the tighter cap.

A paid engine (anthropic / openai with a non-zero price for its model in llm.prices) without `llm.budget_usd`
stops before its first request with the dry-run estimate and the setting to write; `llm.budget_usd=none` runs
without a cap on purpose. The offline embedding engine and local models cost nothing and need no budget.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lagcl.errors import BudgetRequiredError
from lagcl.llm.accounting import Budget, paid_price
from lagcl.llm.cache import ResponseCache
from lagcl.meta import RequestsMeta
from tasks.stages import STAGES

if TYPE_CHECKING:
    from tasks.base import Plan
    from lagcl.semantic.cost import Estimate

# the stages that call the semantic engine: those whose registry entry declares the requests they make
LLM_STAGES = tuple(name for name, spec in STAGES.items() if spec.requests is not None)
RESPONSES = "responses.sqlite"


def ledger_key(plan: "Plan", stage: str) -> str:
    """The stage folder's entry in the spend ledger: <dataset>/<stage>/<fingerprint>."""
    return f"{plan.cfg.data.name}/{stage}/{plan.fingerprints[stage]}"


def stage_costs(plan: "Plan") -> dict[str, float]:
    """What each LLM stage of this plan has cost so far, every attempt: its ledger entry, else what its manifest
    recorded (`llm_paid_usd`, from before: `usage.cost_usd`), else 0."""
    stages = [s for s in LLM_STAGES if s in plan.fingerprints]
    folder = plan.store.root / "llm"
    ledger: dict[str, float] = {}
    if (folder / RESPONSES).is_file():  # a dry run on a fresh cache creates nothing
        cache = ResponseCache(folder)
        try:
            ledger = cache.spent(ledger_key(plan, s) for s in stages)
        finally:
            cache.close()
    out = {}
    for s in stages:
        meta = plan.meta(s)
        recorded = meta.get("llm_paid_usd", RequestsMeta.of(meta).cost_usd)
        out[s] = ledger.get(ledger_key(plan, s), float(recorded or 0.0))
    return out


def stage_budget(plan: "Plan", stage: str) -> Budget | None:
    """What stage `stage`'s engine may spend, after `require_budget`; None for the embedding engine (free)."""
    cfg = plan.cfg
    if cfg.engine.name == "embedding":
        return None
    require_budget(plan)
    costs = stage_costs(plan)
    return Budget(run_usd=cfg.llm.run_budget_usd, stage=stage, stage_usd=cfg.llm.stage_budget_usd.get(stage),
                  run_paid_usd=sum(costs.values()), stage_paid_usd=costs.get(stage, 0.0),
                  paid_by_stage=tuple(costs.items()), ledger=ledger_key(plan, stage))


def paid_by(plan: "Plan", stage: str) -> float | None:
    """What stage `stage` has cost over every attempt, for its manifest (`llm_paid_usd`); None for the
    embedding engine."""
    return None if plan.cfg.engine.name == "embedding" else stage_costs(plan).get(stage)


def suggested_budget(report: "Estimate") -> int:
    """The estimate plus 10% for retries and repairs (which it leaves out), in whole dollars, at least 1."""
    return max(1, math.ceil(report.total_usd * 1.1))


def require_budget(plan: "Plan") -> None:
    """A paid engine without llm.budget_usd: BudgetRequiredError with the dry-run estimate, before any request."""
    cfg = plan.cfg
    price = paid_price(cfg.engine, cfg.llm)
    if price is None or cfg.llm.budget_usd is not None:
        return
    from tasks.workload import workload

    report = workload(plan).estimate(cfg, out=None)
    stages = ", ".join(f"{s} ${report.stage_usd(s):,.2f}" for s in LLM_STAGES if s in plan.fingerprints)
    want = suggested_budget(report)
    raise BudgetRequiredError(
        f"engine {cfg.engine.name}/{cfg.engine.model} is paid (${price[0]:g} input, ${price[1]:g} output per 1M tokens, "
        f"llm.prices) and no budget is set: the dry-run estimate for this run is ${report.total_usd:,.2f} ({stages}; "
        f"DRY_RUN=1 for the details). Set llm.budget_usd, e.g. llm.budget_usd={want} (the estimate plus 10% for "
        f"retries and repairs, in whole dollars), or llm.budget_usd=none to run without a cap; nothing was sent")


def budget_lines(plan: "Plan", report: "Estimate") -> list[str]:
    """DRY_RUN's lines on the budget: each stage cap against its estimate, the run's cap (or why there is none)
    against the estimate, and what this plan's stages have cost already."""
    cfg = plan.cfg
    lines = []
    for stage, cap in sorted(cfg.llm.stage_budget_usd.items()):
        lines.append(f"llm.stage_budget_usd.{stage}=${cap:,.2f}: estimated ${report.stage_usd(stage):,.2f}"
                     + (" -- over: the stage will stop there (resumable)" if report.stage_usd(stage) > cap else ""))
    paid = sum(stage_costs(plan).values())
    already = f"; this run's stages have cost ${paid:,.2f} so far (counted against it)" if paid else ""
    cap = cfg.llm.run_budget_usd
    if cap is not None:
        lines.append(f"llm.budget_usd=${cap:,.2f} for the whole run: estimated ${report.total_usd:,.2f}{already}"
                     + (" -- below the estimate: the run will stop there (resumable)"
                        if report.total_usd > cap else ""))
    elif cfg.llm.budget_usd == "none":
        lines.append(f"llm.budget_usd=none: no cap on this run (estimated ${report.total_usd:,.2f}{already})")
    elif paid_price(cfg.engine, cfg.llm) is not None:
        lines.append(f"llm.budget_usd is not set: a real run stops before its first request; set "
                     f"llm.budget_usd={suggested_budget(report)} (the estimate plus 10%, in whole dollars) or llm.budget_usd=none")
    return lines

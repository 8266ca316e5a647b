"""DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""

from __future__ import annotations

from tasks.base import STAGES, Plan
from tasks.meta import PrepareMeta


def dry_run(plan: Plan) -> int:
    """DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""
    from tasks.estimate import estimate, planned_counts, projections_table, scoring_load, variants, variants_table

    STAGES["prepare"].runner(plan)
    interactions = plan.input("prepare", "interactions")
    n_users, n_items = (PrepareMeta.of(plan.meta("prepare")).stats[k] for k in ("users", "items"))
    cfg = plan.cfg
    counts = planned_counts(interactions, n_users, n_items, cfg)
    if cfg.engine.name == "embedding":
        print(f"engine 'embedding' runs offline on this machine and costs nothing; for an LLM engine's "
              f"price use ENGINE=anthropic|openai|vllm|transformers. Requests it would make: {counts}")
        return 0
    sizes = dict(items_per_call=cfg.augment.items_per_call, group_batch=cfg.groups.batch_size,
                 target_group_size=cfg.groups.target_group_size, history=cfg.profiles.history)
    load = scoring_load(interactions, n_items, cfg)
    report = estimate(counts, cfg.engine, cfg.llm, cfg.data.domain, load=load, **sizes)
    for stage, cap in sorted(cfg.llm.stage_budget_usd.items()):
        print(f"llm.stage_budget_usd.{stage}=${cap:,.2f}: estimated ${report.stage_usd(stage):,.2f}"
              + (" -- over: the stage will stop there (resumable)" if report.stage_usd(stage) > cap else ""))
    if cfg.llm.budget_usd is not None and report.total_usd > cfg.llm.budget_usd:
        print(f"llm.budget_usd=${cfg.llm.budget_usd:,.2f} is below the estimate: the run will stop there (resumable)")
    print()
    print(variants_table(variants(counts, cfg.engine, cfg.llm, cfg.data.domain, load=load, **sizes)))
    print()
    print(projections_table(cfg, load.cold_users / max(1, n_users), **sizes))
    print("dry run: no LLM call was made")
    return 0

"""DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""

from __future__ import annotations

from tasks.base import STAGES, Plan


def dry_run(plan: Plan) -> int:
    """DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""
    from tasks.budget import budget_lines
    from tasks.estimate import projections_table, variants, variants_table, workload

    STAGES["prepare"].runner(plan)
    work = workload(plan)
    cfg = plan.cfg
    if cfg.engine.name == "embedding":
        print(f"engine 'embedding' runs offline on this machine and costs nothing; for an LLM engine's "
              f"price use ENGINE=anthropic|openai|vllm|transformers. Requests it would make: {work.counts}")
        return 0
    report = work.estimate(cfg)
    print("\n".join(budget_lines(plan, report)))
    print()
    print(variants_table(variants(work.counts, cfg.engine, cfg.llm, cfg.data.domain, load=work.load, **work.sizes)))
    print()
    print(projections_table(cfg, work.load.cold_users / max(1, work.n_users), **work.sizes))
    print("dry run: no LLM call was made")
    return 0

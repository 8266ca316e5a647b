"""DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost: the estimate of the
cost model (lagcl/semantic/cost.py) for the requests the registry's LLM stages declare, the budget lines, and the
tables of variants and of projections to the paper's datasets."""

from __future__ import annotations

from typing import Sequence

from lagcl.config import Config
from lagcl.semantic.cost import PAPER_DATASETS, Estimate, estimate, projected_counts, replace_engine, variants
from tasks.base import STAGES, Plan


def dry_run(plan: Plan) -> int:
    """DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""
    from tasks.budget import budget_lines
    from tasks.workload import workload

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


def variants_table(estimates: Sequence[Estimate]) -> str:
    head = (f"{'prompts':<8} {'cache':<5} {'batch':<5} {'calls':>9} {'scoring USD':>12} {'total USD':>10} "
            f"{'USD/cold user':>13} {'tok/candidate in+out':>21}")
    lines = [f"Variants for model {estimates[0].model} (same workload)", head, "-" * len(head)]
    for e in estimates:
        per_cand = e.tokens_per_candidate()
        tok = f"{per_cand[0]:.1f} + {per_cand[1]:.1f}" if per_cand else "-"
        per_user = e.usd_per_cold_user
        lines.append(f"{e.style:<8} {'on' if e.prompt_cache else 'off':<5} {'on' if e.batch_api else 'off':<5} "
                     f"{sum(r.calls for r in e.rows):>9,} {sum(r.cost_usd for r in e.scoring):>12.2f} "
                     f"{e.total_usd:>10.2f} {'-' if per_user is None else f'{per_user:.4f}':>13} {tok:>21}")
    return "\n".join(lines)


def projections_table(cfg: Config, cold_share: float, **kw) -> str:
    """USD for the paper's Table-1 datasets, as configured and in the compact style with cache and batches."""
    best_engine = replace_engine(cfg.engine, batch_api=True)
    best_llm = cfg.llm.model_copy(update={"prompt_style": "compact", "prompt_cache": True})
    head = (f"{'dataset':<12} {'users':>7} {'items':>7} {'interactions':>12} {'cold users':>10} "
            f"{'USD as configured':>17} {'USD compact+cache+batch':>23}")
    lines = [f"Projected cost on the paper's datasets (Table 1), model {cfg.engine.model}; cold-start share "
             f"{cold_share:.1%} as measured here", head, "-" * len(head)]
    for name, (users, items, inter) in PAPER_DATASETS.items():
        counts, load = projected_counts(users, items, cold_share, cfg)
        now = estimate(counts, cfg.engine, cfg.llm, cfg.data.domain, load=load, out=None, **kw)
        best = estimate(counts, best_engine, best_llm, cfg.data.domain, load=load, out=None, **kw)
        lines.append(f"{name:<12} {users:>7,} {items:>7,} {inter:>12,} {load.cold_users:>10,} "
                     f"{now.total_usd:>17,.2f} {best.total_usd:>23,.2f}")
    return "\n".join(lines)

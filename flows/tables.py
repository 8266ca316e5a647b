"""`make table2` / `make table3`: the paper's Table 2 (each backbone: base and with the levels) and Table 3
(control, without each level, all) for one dataset over several training seeds, with the seed-to-seed
spread, 95% intervals and paired tests against the control (lagcl/stats.py, docs/statistics.md).

    python -m flows.tables 3 --data ml-100k --models lightgcn --seeds 5
    python -m flows.tables 2 --data ml-100k --models lightgcn,sgl,lightgcl,xsimgcl --seeds 5

Each (backbone, seed, ablation) is an ordinary pipeline configuration with `train_seed` set: its stages are
cached in the artifact store like any run's, so the split and the LLM stages (which do not depend on the
training seed) are computed once, and a rerun with the same seeds is all cached. The levels are forced on
(`gate.enabled=false`) so that each row measures its level's contribution whatever the gate would keep; the
data level's strength is the one the run chose on validation. The tables stop at the GCL levels: the rerank
level is measured by the `evaluate` stage of an ordinary run (its fused ranking has no per-user table here).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# the stages log through "lagcl", which flows/env.py routes to Prefect; these runs are not flow runs
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from flows.options import build_config  # noqa: E402
from lagcl.artifacts import read_table  # noqa: E402
from lagcl.errors import LagclError  # noqa: E402
from lagcl.meta import Headline, meta_of  # noqa: E402
from lagcl.stats import combined, format_p, mark, paired_seeds, paired_users, spread  # noqa: E402
from tasks.base import STAGES, log, make_plan  # noqa: E402

METRICS = ("recall", "ndcg")
GCL_STAGES_ONLY = ["pipeline.stages.rerank=false", "pipeline.stages.evaluate=false", "gate.enabled=false"]


@dataclass
class RowSource:
    """Where one table row's per-user values come from: a run (its ablation) and a variant of its gcl stage."""

    row: str
    ablation: str | None
    pick: str  # "control" | "data" | "rank": the gcl chain step whose variant the row is


TABLE3 = [RowSource("control", None, "control"), RowSource("w/o rank (+ data)", None, "data"),
          RowSource("w/o data (+ rank)", "no-data", "rank"), RowSource("all (+ data + rank)", None, "rank")]
TABLE2 = [RowSource("base", None, "control"), RowSource("+ levels (data + rank)", None, "rank")]


def run_gcl(data: str, engine: str, model: str, ablation: str | None, train_seed: int | None,
            overrides: list[str]) -> tuple[Path, dict[str, bool]]:
    """Run (or find finished) the stages up to gcl of one configuration; returns the gcl folder and, per
    stage, whether it was already finished (cached)."""
    sets = [*GCL_STAGES_ONLY, *overrides] + ([f"train_seed={train_seed}"] if train_seed is not None else [])
    cfg = build_config(data, engine, model, "on", ablation, sets)
    plan = make_plan(cfg)
    cached = {}
    for stage in plan.fingerprints:
        cached[stage] = plan.store.is_complete(stage, plan.fingerprints[stage])
        STAGES[stage].runner(plan)
    log.info("tables: %s seed %s%s: %s", model, train_seed if train_seed is not None else cfg.seed,
             f" ({ablation})" if ablation else "", ", ".join(f"{s} {'cached' if c else 'computed'}"
                                                             for s, c in cached.items()))
    return Path(plan.ref("gcl").path), cached


def variant_per_user(gcl_folder: Path, pick: str) -> tuple[str, pl.DataFrame]:
    """The test per-user table of the chain step `pick` of a finished gcl stage (the kept data strength, the
    rank variant, or the control)."""
    h = Headline.of("gcl", meta_of(gcl_folder))
    levels = h.levels if h is not None else []
    steps = [r for r in levels if r["level"] == pick and r["trained"] and r["kept"]]
    if not steps:
        raise LagclError(f"{gcl_folder}: the chain has no trained '{pick}' step (levels: "
                         f"{[(r['level'], r['variant'], r['kept']) for r in levels]}); is that level configured?")
    name = steps[-1]["variant"]
    pu = read_table(gcl_folder, "per_user").filter((pl.col("variant") == name) & (pl.col("split") == "test"))
    return name, pu.select("user", *METRICS)


def table_rows(per_seed: dict[str, list[pl.DataFrame]], names: dict[str, str], resamples: int = 10000
               ) -> list[dict]:
    """One dict per row: per metric the seed mean, std and 95% interval, and (rows other than the control)
    the difference against the control with its interval over seeds, p over users and over seeds, the mark."""
    control_key = next(iter(per_seed))
    control = per_seed[control_key]
    n = len(control)
    out = []
    for row, frames in per_seed.items():
        rec: dict = {"row": row, "variant": names[row], "seeds": n}
        both = None if row == control_key else _users_over_seeds(frames, control)
        for metric in METRICS:
            vals = [float(f[metric].mean()) for f in frames]
            s = spread(vals)
            rec.update({f"{metric}@20": s.mean, f"{metric}@20_std": s.std, f"{metric}@20_lo": s.lo,
                        f"{metric}@20_hi": s.hi})
            if both is None:
                continue
            base = [float(f[metric].mean()) for f in control]
            seeds = paired_seeds(vals, base)
            # each user's difference averaged over seeds (the same users have test items in every seed)
            v = np.mean([both[f"{metric}_v{i}"].to_numpy() for i in range(n)], axis=0)
            c = np.mean([both[f"{metric}_c{i}"].to_numpy() for i in range(n)], axis=0)
            users = paired_users(v, c, resamples)
            p = combined(users.p, seeds.p if n >= 2 else None)
            rec.update({f"{metric}@20_diff": seeds.diff, f"{metric}@20_diff_lo": seeds.lo if n >= 2 else users.lo,
                        f"{metric}@20_diff_hi": seeds.hi if n >= 2 else users.hi, f"{metric}@20_p_users": users.p,
                        f"{metric}@20_p_seeds": seeds.p, f"{metric}@20_p": p, f"{metric}@20_mark": mark(p),
                        f"{metric}@20_gain": seeds.diff / rec_base if (rec_base := float(np.mean(base))) else None})
        out.append(rec)
    return out


def _users_over_seeds(frames: list[pl.DataFrame], control: list[pl.DataFrame]) -> pl.DataFrame:
    """One row per user present in every seed: seed i's variant metrics (`<metric>_v<i>`) beside the
    control's (`<metric>_c<i>`)."""
    joined = [f.select("user", *(pl.col(m).alias(f"{m}_v{i}") for m in METRICS)).join(
        c.select("user", *(pl.col(m).alias(f"{m}_c{i}") for m in METRICS)), on="user")
        for i, (f, c) in enumerate(zip(frames, control))]
    both = joined[0]
    for j in joined[1:]:
        both = both.join(j, on="user")
    return both


def _cell(r: dict, metric: str) -> str:
    std = r[f"{metric}@20_std"]
    return f"{r[f'{metric}@20']:.4f}" + ("" if np.isnan(std) else f" ± {std:.4f}") + r.get(f"{metric}@20_mark", "")


def _diff(r: dict, metric: str) -> str:
    if f"{metric}@20_diff" not in r:
        return "-"
    lo, hi = r[f"{metric}@20_diff_lo"], r[f"{metric}@20_diff_hi"]
    gain = r.get(f"{metric}@20_gain")
    return (f"{r[f'{metric}@20_diff']:+.4f}" + (f" ({gain:+.1%})" if gain is not None else "")
            + ("" if np.isnan(lo) else f" [{lo:+.4f}, {hi:+.4f}]"))


def markdown(title: str, blocks: dict[str, list[dict]], seeds: list[int], note: str) -> str:
    lines = [f"# {title}", "", f"Test split, all-rank; mean ± standard deviation over {len(seeds)} training seed(s) "
             f"({', '.join(map(str, seeds))}); the difference against the control is the mean over seeds with its "
             "95% interval (t over seeds; over users when one seed); p: paired sign-flip test over users (each "
             "user's difference averaged over seeds) and paired t-test over seeds; the mark uses the larger: "
             "** p < 0.01, * p < 0.05.", "", note, "",
             "| backbone | row | variant | Recall@20 | vs control | p users | p seeds | NDCG@20 | vs control | "
             "p users | p seeds |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for backbone, rows in blocks.items():
        for r in rows:
            lines.append(f"| {backbone} | {r['row']} | {r['variant']} | {_cell(r, 'recall')} | {_diff(r, 'recall')} | "
                         f"{format_p(r.get('recall@20_p_users'))} | {format_p(r.get('recall@20_p_seeds'))} | "
                         f"{_cell(r, 'ndcg')} | {_diff(r, 'ndcg')} | {format_p(r.get('ndcg@20_p_users'))} | "
                         f"{format_p(r.get('ndcg@20_p_seeds'))} |")
    return "\n".join(lines) + "\n"


def plot(blocks: dict[str, list[dict]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, METRICS):
        labels, means, errs = [], [], []
        for backbone, rows in blocks.items():
            for r in rows:
                labels.append(f"{backbone}\n{r['row']}{r.get(f'{metric}@20_mark', '')}")
                means.append(r[f"{metric}@20"])
                half = r[f"{metric}@20_hi"] - r[f"{metric}@20"]
                errs.append(0.0 if np.isnan(half) else half)
        ax.bar(range(len(means)), means, yerr=errs, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(means)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel(f"test {metric.upper() if metric == 'ndcg' else 'Recall'}@20 (95% interval over seeds)")
        lo = min(m - e for m, e in zip(means, errs))
        ax.set_ylim(max(0.0, lo * 0.95), max(m + e for m, e in zip(means, errs)) * 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_table(table: int, data: str, engine: str, models: list[str], n_seeds: int, overrides: list[str],
                resamples: int = 10000) -> tuple[str, Path]:
    sources = TABLE3 if table == 3 else TABLE2
    base_cfg = build_config(data, engine, models[0], "on", None, overrides)
    seeds = [base_cfg.seed + i for i in range(n_seeds)]
    blocks: dict[str, list[dict]] = {}
    all_cached = True
    for model in models:
        per_seed: dict[str, list[pl.DataFrame]] = {s.row: [] for s in sources}
        names: dict[str, set[str]] = {s.row: set() for s in sources}
        for seed in seeds:
            runs: dict[str | None, Path] = {}
            for src in sources:
                if src.ablation not in runs:
                    folder, cached = run_gcl(data, engine, model, src.ablation,
                                             None if seed == base_cfg.seed else seed, overrides)
                    runs[src.ablation] = folder
                    all_cached &= all(cached.values())
                name, pu = variant_per_user(runs[src.ablation], src.pick)
                per_seed[src.row].append(pu)
                names[src.row].add(name)
        blocks[model] = table_rows(per_seed, {k: " / ".join(sorted(v)) for k, v in names.items()}, resamples)
    store = make_plan(base_cfg).store
    out_dir = store.root / store.dataset / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"table{table}-{'-'.join(models)}-{n_seeds}seeds"
    title = (f"Table {table} on {data} ({engine} engine): " +
             ("each backbone without and with the levels" if table == 2 else "control, without each level, all"))
    note = ("Levels forced on (gate.enabled=false) so each row shows its level's contribution; the data level's "
            "strength is the one each run chose on validation. The rerank level is not in this table (see the "
            "`evaluate` stage of a run).")
    text = markdown(title, blocks, seeds, note)
    (out_dir / f"{stem}.md").write_text(text)
    rows = [{"backbone": b, **r} for b, rs in blocks.items() for r in rs]
    with open(out_dir / f"{stem}.csv", "w", newline="") as fh:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    plot(blocks, out_dir / f"{stem}.png", title)
    print(text)
    print(f"written: {out_dir / stem}.md, .csv, .png" + ("  (every stage was already finished: all cached)"
                                                          if all_cached else ""))
    return text, out_dir


def main(argv: list[str] | None = None) -> int:
    import logging

    p = argparse.ArgumentParser(prog="python -m flows.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", type=int, choices=[2, 3])
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--engine", default="embedding")
    p.add_argument("--models", default="lightgcn", help="comma- or space-separated backbones")
    p.add_argument("--seeds", type=int, default=5, help="training seeds: seed, seed+1, ...")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = [m for m in args.models.replace(",", " ").split() if m]
    if args.seeds < 1 or not models:
        print("error: --seeds must be >= 1 and --models name at least one backbone", file=sys.stderr)
        return 2
    try:
        build_table(args.table, args.data, args.engine, models, args.seeds, args.overrides, args.resamples)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

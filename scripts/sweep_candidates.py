"""Candidate set size analysis (the paper's Figure 4): test Recall@20 / NDCG@20 of CF + reranker for
|C_u| in {0, 5, 10, 20, 50, 100}.

    python -m scripts.sweep_candidates [--sizes 0,5,10,20,50,100] [--mode retrain|rescore] [--data ml-100k]
                                       [--set rerank.max_users=200 ...]

`retrain` (default, the paper's protocol): one pipeline run per size (`rerank.candidates=K`), each with its
own reranker trained on its own C_u; the upstream stages are shared through their fingerprints, so only
rerank and evaluate run per size. `rescore` (cheap, for CPUs; needs the finished run of the same options): the reranker of that run
(`rerank.candidates` as set) scores the CF top-max(sizes) of its users once, and each size fuses its first
K; the reranker then sees larger C_u at inference than in training (Lemma 4's caveat).
Writes `<cache>/<data>/sweeps/candidates-<mode>.{csv,md,png}` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl


def _plan(args: argparse.Namespace, extra: list[str]):
    from flows.options import build_config
    from tasks.base import make_plan

    cfg = build_config(args.data, args.engine, args.model, args.rank, None, [*args.overrides, *extra])
    return make_plan(cfg)


def _run_stages(plan, upto: str) -> None:
    from tasks.base import STAGES

    for stage in plan.fingerprints:
        STAGES[stage].runner(plan)
        if stage == upto:
            return


def retrain(args: argparse.Namespace, sizes: list[int]) -> pl.DataFrame:
    from lagcl.artifacts import read_table

    rows = []
    for k in sizes:
        t0 = time.time()
        plan = _plan(args, [f"rerank.candidates={k}"])
        _run_stages(plan, "evaluate")
        m = read_table(Path(plan.ref("evaluate").path), "metrics")
        rows += _rows(m, k, time.time() - t0)
    return pl.DataFrame(rows)


def rescore(args: argparse.Namespace, sizes: list[int]) -> pl.DataFrame:
    from lagcl.artifacts import is_complete, read_table
    from lagcl.chain.rerank_level import EvaluateInputs, evaluation_scope, fusion_variants
    from lagcl.errors import LagclError
    from lagcl.rerank.data import PromptBuilder, build_pairs, candidate_sets, histories, item_titles, without_test
    from lagcl.rerank.fusion import fusion_metrics
    from lagcl.rerank.infer import score_texts
    from lagcl.rerank.score import RerankInputs, profile_texts
    from lagcl.rerank.train import load_trained

    plan = _plan(args, [])
    if not is_complete(Path(plan.ref("rerank").path), verify=False):
        raise LagclError("--mode rescore analyses a finished run: run `make pipeline` with the same options first "
                         f"(no finished rerank stage at {plan.ref('rerank').path})")
    cfg, rc = plan.cfg, plan.cfg.rerank
    prep, rr = Path(plan.ref("prepare").path), Path(plan.ref("rerank").path)
    inter = read_table(prep, "interactions")
    users_t, items = read_table(prep, "users"), read_table(prep, "items")
    cf_topk = read_table(Path(plan.ref("gcl").path), "cf_topk")
    roles_df = read_table(rr, "rerank_users")
    roles = dict(zip(roles_df["user"].to_list(), roles_df["role"].to_list()))

    def upstream(stage: str, table: str) -> pl.DataFrame | None:
        ref = plan.upstream("rerank").get(stage)
        done = ref is not None and (Path(ref.path) / "manifest.json").is_file()
        return read_table(Path(ref.path), table) if done else None

    augmented = upstream("augment", "augmented")
    # the rerank stage's prompt texts: the profiles stage's summaries, else metadata
    up, ip, _ = profile_texts(RerankInputs(inter, users_t, items, cf_topk, augmented,
                                           upstream("profiles", "user_profiles"), upstream("profiles", "item_profiles")))
    seen = without_test(inter)
    # the same history the rerank stage showed its reranker
    pairs = build_pairs(candidate_sets(cf_topk, max(sizes)), seen, histories(seen, augmented, rc.history),
                        PromptBuilder(up, ip, item_titles(items), rc.spec.format, rc.spec.profile_chars,
                                      cfg.data.domain), roles)
    model, tok = load_trained(rr / "reranker" / "model", rc.spec)
    t0 = time.time()
    scores = pairs.select("user", "item").with_columns(
        pl.Series("score", score_texts(model, tok, pairs["text"].to_list(), rc.spec.eval_batch_size,
                                       rc.spec.max_length)))
    secs = time.time() - t0
    x = EvaluateInputs(inter, users_t, items, cf_topk, scores, roles_df, None, {}, None, {})
    rows = []
    for k in sizes:
        # the evaluate stage's users, candidate matrices and (alpha, tau) grid search, with |C_u| = k
        cfg_k = cfg.model_copy(update={"rerank": rc.model_copy(update={"candidates": k})})
        scope = evaluation_scope(cfg_k, x)
        variants, _ = fusion_variants(cfg_k, scope)
        alpha, tau = variants.get("cf+rerank (tuned)", (cfg.fusion.alpha, cfg.fusion.tau))
        mat, test, valid = scope.splits["test"]
        for variant, (a, t) in {"cf": (1.0, tau), "cf+rerank": (alpha, tau)}.items():
            for (metric, kk), v in fusion_metrics(mat, a, t, test, valid, (20,)).items():
                rows.append({"candidates": k, "variant": variant, "metric": metric, "k": kk, "value": v,
                             "alpha": a, "tau": t, "seconds": round(secs, 1)})
    return pl.DataFrame(rows)


def _rows(m: pl.DataFrame, k: int, seconds: float) -> list[dict]:
    head = "cf+rerank (tuned)" if "cf+rerank (tuned)" in m["variant"].to_list() else (
        "cf+rerank" if "cf+rerank" in m["variant"].to_list() else "cf")
    out = []
    for variant in ("cf", head):
        sel = m.filter((pl.col("variant") == variant) & (pl.col("split") == "test") & (pl.col("k") == 20))
        for r in sel.iter_rows(named=True):
            out.append({"candidates": k, "variant": "cf" if variant == "cf" else "cf+rerank", "metric": r["metric"],
                        "k": 20, "value": r["value"], "alpha": r["alpha"], "tau": r["tau"],
                        "seconds": round(seconds, 1)})
    return out


def plot(table: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("recall", "ndcg")):
        for variant, style in (("cf+rerank", "o-"), ("cf", "--")):
            sel = table.filter((pl.col("metric") == metric) & (pl.col("variant") == variant)).sort("candidates")
            ax.plot(sel["candidates"].to_list(), sel["value"].to_list(), style, label=variant)
        ax.set_xlabel("|C_u|")
        ax.set_title(f"{'Recall' if metric == 'recall' else 'NDCG'}@20 (test)")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from flows.options import add_run_options

    p = argparse.ArgumentParser(prog="python -m scripts.sweep_candidates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--sizes", default="0,5,10,20,50,100")
    p.add_argument("--mode", choices=["retrain", "rescore"], default="retrain")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    from lagcl.errors import LagclError

    try:
        table = retrain(args, sizes) if args.mode == "retrain" else rescore(args, sizes)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = _plan(args, [])
    out = Path(plan.store.root) / plan.cfg.data.name / "sweeps"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"candidates-{args.mode}"
    table.write_csv(stem.with_suffix(".csv"))
    wide = (table.filter(pl.col("variant") == "cf+rerank").pivot(on="metric", index=["candidates", "alpha", "tau"],
                                                                 values="value").sort("candidates"))
    lines = ["| |C_u| | alpha | tau | R@20 | N@20 |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['candidates']} | {r['alpha']:g} | {r['tau']:g} | {r['recall']:.4f} | {r['ndcg']:.4f} |"
              for r in wide.iter_rows(named=True)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(table, stem.with_suffix(".png"), f"{plan.cfg.data.name}, reranker {plan.cfg.rerank.model}, mode {args.mode}")
    print("\n".join(lines))
    print(f"written: {stem}.csv .md .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

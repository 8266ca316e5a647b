"""The evaluate stage's report: the Markdown (what each level bought, CF and CF + reranker, both protocols) and
its plots (test Recall/NDCG per variant, the fusion grid)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.gate import format_chain


def metrics_plot(metrics: pl.DataFrame, path: Path, dataset: str) -> Path:
    """Test Recall@N and NDCG@N per variant, grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = metrics.filter(pl.col("split") == "test")
    variants = test["variant"].unique(maintain_order=True).to_list()
    ks = sorted(test["k"].unique().to_list())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(variants))
    for ax, metric in zip(axes, ("recall", "ndcg")):
        for i, v in enumerate(variants):
            vals = [test.filter((pl.col("variant") == v) & (pl.col("metric") == metric) & (pl.col("k") == k))
                    ["value"].item() for k in ks]
            ax.bar([j + i * width for j in range(len(ks))], vals, width, label=v)
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(ks))], [f"@{k}" for k in ks])
        ax.set_title(f"{dataset} test {'Recall' if metric == 'recall' else 'NDCG'}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grid_plot(grid: pl.DataFrame, path: Path) -> Path:
    """Validation NDCG@20 of the held-out users over the (alpha, tau) grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas, taus = sorted(grid["alpha"].unique().to_list()), sorted(grid["tau"].unique().to_list())
    values = [[grid.filter((pl.col("alpha") == a) & (pl.col("tau") == t))["value"].item() for a in alphas] for t in taus]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    im = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_xlabel("alpha (weight of the CF score, eq. 19)")
    ax.set_ylabel("tau (eq. 20)")
    ax.set_title("validation NDCG@20, held-out users")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_markdown(cfg, meta: dict, metrics: pl.DataFrame, grid: pl.DataFrame | None, gcl_meta: dict,
                    rr_meta: dict, plots: list[str]) -> str:
    ks = sorted(metrics["k"].unique().to_list())
    lines = [f"# Evaluation: {cfg.data.name}", "", "## What each level bought", "",
             "Each level against the control (same backbone, seed and data, no level on), kept only when it "
             "beats the step before it on validation (test is only reported). Changes in % are against the "
             "control; the rerank row's validation figure is over the held-out users.", "", "```",
             *format_chain(meta.get("levels", [])), "```", "", "## CF and CF + reranker", "",
             f"Backbone `{gcl_meta.get('backbone')}` (rank level {'on' if gcl_meta.get('rank_level') else 'off'}), "
             f"reranker `{rr_meta.get('model', 'none')}` over |C_u| = {meta['candidates']} CF candidates; "
             f"{meta['users']} users evaluated ({meta['holdout_users']} held out from reranker training: the "
             "validation rows and the grid search use only them). All-rank lists: C_u reordered by eq. 19-21, "
             "then the other items in CF order; test excludes training and validation positives.", "",
             "| variant | alpha | tau | split | " + " | ".join(f"R@{k} | N@{k}" for k in ks) + " |",
             "|---|---:|---:|---|" + "---:|---:|" * len(ks)]
    for (variant, split), grp in metrics.group_by(["variant", "split"], maintain_order=True):
        vals = {(r["metric"], r["k"]): r["value"] for r in grp.iter_rows(named=True)}
        first = grp.row(0, named=True)
        lines.append(f"| {variant} | {first['alpha']:.2f} | {first['tau']:g} | {split} | "
                     + " | ".join(f"{vals[('recall', k)]:.4f} | {vals[('ndcg', k)]:.4f}" for k in ks) + " |")
    lines += ["", f"Headline ({meta['headline_variant']}): test Recall@20 {meta['test_recall@20']:.4f}, "
              f"NDCG@20 {meta['test_ndcg@20']:.4f} (CF alone {meta['cf_test_recall@20']:.4f} / "
              f"{meta['cf_test_ndcg@20']:.4f})."]
    rec = meta.get("recommendations") or {}
    if "protocol" in rec:
        left_out = ("every item the user rated in training or validation, liked or disliked"
                    if rec["exclude"] == "rated" else "the user's training and validation positives only")
        lines += ["", f"The `recommendations` table (top {rec['n']}, recommend.exclude = {rec['exclude']}) leaves out "
                  f"{left_out}: the `{rec['protocol']}` protocol, under which its first 20 rows give test Recall@20 "
                  f"{rec['test_recall@20']:.4f}, NDCG@20 {rec['test_ndcg@20']:.4f}."]
    if grid is not None:
        lines += ["", f"Grid search on validation (held-out users): alpha = {meta['alpha']:g}, tau = {meta['tau']:g} "
                  f"(configured: alpha = {meta['config_alpha']:g}, tau = {meta['config_tau']:g})."]
    if rr_meta:
        lines += ["", f"Reranker: {rr_meta.get('train_pairs')} training pairs ({rr_meta.get('train_positives')} "
                  f"positive), {rr_meta.get('train_seconds')} s training, {rr_meta.get('scored_pairs')} pairs scored "
                  f"in {rr_meta.get('score_seconds')} s; prompts from {rr_meta.get('profiles')}."]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def protocols_markdown(gcl_metrics: pl.DataFrame, chosen: str | None) -> str:
    """Test Recall/NDCG@20 of the control and the chosen CF model under both protocols (today's, and with
    the known training dislikes masked from the ranking), for all, cold-start and warm users."""
    if "protocol" not in gcl_metrics.columns:
        return ""
    variants = ["control"] + ([chosen] if chosen and chosen != "control" else [])
    lines = ["", "## Both protocols (CF models, test)", "",
             "`all`: every item without a training (or validation) positive is ranked; `dislikes masked`: the "
             "user's known training dislikes (ratings <= threshold) are not ranked either.", "",
             "| model | protocol | R@20 all | N@20 all | R@20 cold | N@20 cold | R@20 warm | N@20 warm |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    test = gcl_metrics.filter((pl.col("split") == "test") & (pl.col("k") == 20))
    for v in variants:
        for protocol in ("all", "dislikes masked"):
            cells = []
            for seg in ("all", "cold", "warm"):
                for metric in ("recall", "ndcg"):
                    x = test.filter((pl.col("variant") == v) & (pl.col("protocol") == protocol) &
                                    (pl.col("segment") == seg) & (pl.col("metric") == metric))["value"]
                    cells.append(f"{x[0]:.4f}" if len(x) else "-")
            lines.append(f"| {v} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

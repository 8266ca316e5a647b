"""The evaluate stage's report: the Markdown (what each level bought, CF and CF + reranker, both protocols) and
its plots (test Recall/NDCG per variant, the fusion grid, the chain of levels with intervals). Each says when a
value is a fallback (the reranker left out: CF alone) and which metrics reranking cannot move."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.chain.text import format_chain
from lagcl.meta import TEST_NDCG, TEST_RECALL, metric_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cannot_move_text(meta: dict) -> str | None:
    """Which metrics reranking cannot change, and why, from the run's own candidate count (None: none)."""
    fixed, k = meta.get("cannot_move") or [], meta.get("candidates", 0)
    if not fixed:
        return None
    names = ", ".join(f"Recall@{m.split('@')[1]}" for m in fixed)
    return (f"{names} cannot move: the reranker reorders only the top |C_u| = {k} CF candidates (rerank.candidates), "
            f"so the top-N set for every N >= {k} is CF's and every fused ranking has CF's Recall there; NDCG@N "
            f"(order inside C_u) and Recall@N for N < {k} can move")


def fallback_text(meta: dict) -> str | None:
    """The headline's fusion when it is a fallback (the reranker left out or not run), else None."""
    return (meta.get("fusion") or {}).get("fallback")


def metrics_plot(metrics: pl.DataFrame, path: Path, dataset: str, meta: dict | None = None) -> Path:
    """Test Recall@N and NDCG@N per variant, grouped bars; the headline variant is named in the legend (as a
    fallback where it is one), and the cut-offs where reranking cannot move Recall are marked on the bars."""
    plt = _pyplot()
    meta = meta or {}
    test = metrics.filter(pl.col("split") == "test")
    variants = test["variant"].unique(maintain_order=True).to_list()
    ks = sorted(test["k"].unique().to_list())
    fixed = {int(m.split("@")[1]) for m in meta.get("cannot_move") or [] if m.startswith("recall@")}
    head, fused = meta.get("headline_variant"), (meta.get("fusion") or {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    width = 0.8 / max(1, len(variants))

    def label(v: str) -> str:
        if v == head:
            return f"{v} (headline{', fallback' if fallback_text(meta) else ''})"
        if v == fused.get("variant") and not fused.get("kept"):
            return f"{v} (left out)"
        return v

    for ax, metric in zip(axes, ("recall", "ndcg")):
        top = 0.0
        for i, v in enumerate(variants):
            vals = [test.filter((pl.col("variant") == v) & (pl.col("metric") == metric) & (pl.col("k") == k))
                    ["value"].item() for k in ks]
            top = max(top, *vals)
            ax.bar([j + i * width for j in range(len(ks))], vals, width, label=label(v))
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(ks))], [f"@{k}" for k in ks])
        ax.set_title(f"{dataset} test {'Recall' if metric == 'recall' else 'NDCG'}")
        ax.set_ylim(0, top * 1.22 if top else 1)
        if metric == "recall":
            for j, k in enumerate(ks):
                if k in fixed:
                    ax.annotate(f"cannot move\n(|C_u| = {meta['candidates']})", (j + width * (len(variants) - 1) / 2,
                                top * 1.02), ha="center", va="bottom", fontsize=8, color="dimgray")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=len(variants), frameon=False)
    notes = [t for t in (cannot_move_text(meta), fallback_text(meta) and f"headline: {fallback_text(meta)}") if t]
    if notes:
        fig.text(0.01, 0.01, "\n".join(_wrap(n, 150) for n in notes), fontsize=7.5, va="bottom", color="dimgray")
    fig.tight_layout(rect=(0, 0.05 * len(notes) + 0.02 if notes else 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def grid_plot(grid: pl.DataFrame, path: Path, meta: dict | None = None) -> Path:
    """Validation NDCG@20 of the held-out users over the (alpha, tau) grid; the grid's choice is marked, and the
    title says whether the headline uses it or falls back to CF alone."""
    plt = _pyplot()
    meta = meta or {}
    alphas, taus = sorted(grid["alpha"].unique().to_list()), sorted(grid["tau"].unique().to_list())
    values = [[grid.filter((pl.col("alpha") == a) & (pl.col("tau") == t))["value"].item() for a in alphas] for t in taus]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    im = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_xlabel("alpha (weight of the CF score, eq. 19)")
    ax.set_ylabel("tau (eq. 20)")
    fusion = meta.get("fusion") or {}
    title = "validation NDCG@20, held-out users"
    if fusion.get("chosen_by", "").startswith("grid") and fusion["alpha"] in alphas and fusion["tau"] in taus:
        ax.plot(alphas.index(fusion["alpha"]), taus.index(fusion["tau"]), marker="*", markersize=16, color="red",
                markeredgecolor="white", linestyle="none")
        title += f"; * grid's choice alpha {fusion['alpha']:g}, tau {fusion['tau']:g}"
        title += ("\nkept: the headline uses it" if fusion.get("kept") else
                  "\nleft out by the gate: the headline is the fallback, CF alone (alpha 1)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chain_points(levels: list[dict], metric: str) -> list[dict]:
    """What chain.png draws for one metric ("recall" or "ndcg", test @20): per chain row its label, status
    (`control`, `kept`, `turned down`, `not trained`), test value, and the 95% interval of its paired difference
    against the control placed on the control's value (lo, hi: control + the interval's ends; None without a
    paired test)."""
    key = f"test_{metric}@20"
    control = next((r for r in levels if r["level"] == "control"), {})
    base = control.get(key)
    out = []
    for r in levels:
        v = r.get(key)
        status = ("control" if r["level"] == "control" else "not trained" if v is None or not r.get("trained", True)
                  else "kept" if r.get("kept") else "turned down")
        has = r.get(f"{key}_lo") is not None and base is not None and status != "control"
        out.append({"label": ("control" if r["level"] == "control" else f"+ {r['level']}") + f"\n{str(r['variant'])[:22]}",
                    "level": r["level"], "status": status, "value": v,
                    "lo": base + r[f"{key}_lo"] if has else None, "hi": base + r[f"{key}_hi"] if has else None})
    return out


def chain_plot(levels: list[dict], path: Path, dataset: str, meta: dict | None = None) -> Path:
    """The chain control -> + data -> + rank -> + rerank: each step's test Recall@20 and NDCG@20 with the 95%
    interval of its paired difference against the control (lagcl/stats.py, drawn around the step's value, so a
    bar that crosses the dashed control line is a change within the noise). Kept steps are filled, turned-down
    ones hollow and labelled, steps that were not trained are named where their point would be; the metrics
    reranking cannot move are marked on the rerank step."""
    plt = _pyplot()
    meta = meta or {}
    fixed = set(meta.get("cannot_move") or [])
    colors = {"control": "tab:blue", "kept": "tab:green", "turned down": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, metric, title in zip(axes, ("recall", "ndcg"), ("Recall@20", "NDCG@20")):
        points = chain_points(levels, metric)
        base = next((p["value"] for p in points if p["status"] == "control"), None)
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="control")
        ys = [y for p in points for y in (p["value"], p["lo"], p["hi"]) if y is not None]
        lo_all, hi_all = (min(ys), max(ys)) if ys else (0.0, 1.0)
        pad = (hi_all - lo_all) * 0.25 or 0.01
        for x, p in enumerate(points):
            v = p["value"]
            if p["status"] == "not trained":
                ax.annotate("not trained", (x, base if base is not None else lo_all), ha="center", va="bottom",
                            fontsize=8, color="dimgray", rotation=90, xytext=(0, 6), textcoords="offset points")
                continue
            color = colors[p["status"]]
            if p["lo"] is not None:
                ax.errorbar(x, v, yerr=[[max(0.0, v - p["lo"])], [max(0.0, p["hi"] - v)]], color=color, capsize=5,
                            linewidth=1.2)
            ax.plot(x, v, marker="o", markersize=9, color=color,
                    markerfacecolor="white" if p["status"] == "turned down" else color, markeredgewidth=2,
                    linestyle="none")
            tag = "" if p["status"] == "control" else p["status"]
            if f"{metric}@20" in fixed and p["level"] == "rerank":
                tag += "\ncannot move"
            ax.annotate(f"{v:.4f}" + (f"\n{tag}" if tag else ""), (x, v), xytext=(9, 6), textcoords="offset points",
                        fontsize=8, va="bottom", color=color,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        ax.set_xticks(range(len(points)), [p["label"] for p in points], fontsize=8)
        ax.set_xlim(-0.5, len(points) - 0.1)
        ax.set_ylim(lo_all - pad, hi_all + pad)
        ax.set_title(f"{dataset} test {title} along the chain", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower left")
    notes = ["bars: 95% interval of the step's paired test difference against the control (bootstrap over users), "
             "drawn around its value; filled: kept on validation; hollow: turned down; dashed: the control"]
    if cannot_move_text(meta):
        notes.append(cannot_move_text(meta))
    fig.text(0.01, 0.01, "\n".join(_wrap(n, 175) for n in notes), fontsize=7.5, va="bottom", color="dimgray")
    fig.tight_layout(rect=(0, 0.06 * len(notes) + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fusion_lines(meta: dict) -> list[str]:
    """Which (alpha, tau) the headline uses and where they come from: the grid's (or the configured) choice, or
    the fallback CF alone when the reranker was left out, so the text, the table and grid.png agree."""
    f = meta.get("fusion") or {}
    if not f.get("variant"):
        return [f"Headline: {f['fallback']}."] if f.get("fallback") else []
    chosen = (f"alpha = {f['alpha']:g}, tau = {f['tau']:g}, chosen by the {f['chosen_by']}" if
              f["chosen_by"].startswith("grid") else f"alpha = {f['alpha']:g}, tau = {f['tau']:g} from the "
              f"{f['chosen_by']}")
    lines = [f"Fusion `{f['variant']}`: {chosen} (configured: alpha = {meta['config_alpha']:g}, tau = "
             f"{meta['config_tau']:g})."]
    if f.get("kept"):
        lines.append(f"The reranker was kept: the headline ranking is `{f['variant']}` with these alpha and tau.")
    else:
        lines.append(f"**Fallback:** the headline ranking is {f['fallback']}; the `{f['variant']}` rows show what "
                     "the left-out fusion would have given, not the headline.")
    return lines


ROLE = {"cf": "CF alone (alpha 1: tau has no effect)", "cf+rerank": "configured (fusion.alpha, fusion.tau)",
        "cf+rerank (tuned)": "grid search, held-out validation", "rerank only": "reranker alone (alpha 0)"}


def report_markdown(cfg, meta: dict, metrics: pl.DataFrame, grid: pl.DataFrame | None, gcl_meta: dict,
                    rr_meta: dict, plots: list[str]) -> str:
    ks = sorted(metrics["k"].unique().to_list())
    head = meta["headline_variant"]
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
             "| variant | alpha | tau | alpha, tau from | split | " + " | ".join(f"R@{k} | N@{k}" for k in ks) + " |",
             "|---|---:|---:|---|---|" + "---:|---:|" * len(ks)]
    for (variant, split), grp in metrics.group_by(["variant", "split"], maintain_order=True):
        vals = {(r["metric"], r["k"]): r["value"] for r in grp.iter_rows(named=True)}
        first = grp.row(0, named=True)
        name = f"**{variant}** (headline{', fallback' if fallback_text(meta) else ''})" if variant == head else variant
        if variant == (meta.get("fusion") or {}).get("variant") and variant != head:
            name += " (left out)"
        tau = "-" if first["alpha"] == 1.0 else f"{first['tau']:g}"
        lines.append(f"| {name} | {first['alpha']:.2f} | {tau} | {ROLE.get(variant, '')} | {split} | "
                     + " | ".join(f"{vals[('recall', k)]:.4f} | {vals[('ndcg', k)]:.4f}" for k in ks) + " |")
    lines += ["", f"Headline ({head}): test Recall@20 {meta[TEST_RECALL]:.4f}, "
              f"NDCG@20 {meta[TEST_NDCG]:.4f} (CF alone {meta[metric_key('test', of='cf')]:.4f} / "
              f"{meta[metric_key('test', 'ndcg', of='cf')]:.4f})."]
    for line in fusion_lines(meta):
        lines += ["", line]
    if cannot_move_text(meta):
        lines += ["", f"**What reranking cannot change:** {cannot_move_text(meta)}. Their equal bars in metrics.png "
                  "and chain.png are this, not a result of the reranker."]
    rec = meta.get("recommendations") or {}
    if "protocol" in rec:
        left_out = ("every item the user rated in training or validation, liked or disliked"
                    if rec["exclude"] == "rated" else "the user's training and validation positives only")
        lines += ["", f"The `recommendations` table (top {rec['n']}, recommend.exclude = {rec['exclude']}) leaves out "
                  f"{left_out}: the `{rec['protocol']}` protocol, under which its first 20 rows give test Recall@20 "
                  f"{rec[TEST_RECALL]:.4f}, NDCG@20 {rec[TEST_NDCG]:.4f}."]
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

"""Stage 6: base CF and CF + reranker side by side (eq. 19-21), all-rank Recall/NDCG, report and plots.

The reranker is kept (the headline) only when the tuned fusion beats CF on the held-out users' validation
NDCG@20 above the noise (gate.min_gain and gate.max_p, the paired test of lagcl/stats.py; DESIGN.md 13); the report shows the whole chain control -> + data -> + rank -> + rerank."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from lagcl.artifacts import is_complete, read_manifest, read_table
from lagcl.augment import cold_warm
from lagcl.errors import LagclError
from lagcl.gate import Step, above_noise, beats, format_chain, gain
from lagcl.recommend import recommendations
from lagcl.rerank.fusion import CandidateMatrix, fusion_metrics, fusion_user_metrics, grid_search, user_items
from lagcl.stats import format_p, mark, paired_users
from tasks.base import Plan, StageRef, log

STAGE = "evaluate"


def run(plan: Plan) -> StageRef:
    cfg, rc = plan.cfg, plan.cfg.rerank
    ref = plan.ref(STAGE)
    ups = plan.upstream(STAGE)
    if "gcl" not in ups:
        raise LagclError("the evaluate stage needs the gcl stage's cf_topk: enable pipeline.stages.gcl")
    with plan.stage_dir(STAGE) as sd:
        if sd.complete:
            return ref
        t0 = time.time()
        prep = Path(ups["prepare"].path)
        inter = read_table(prep, "interactions")
        n_users, n_items = read_table(prep, "users").height, read_table(prep, "items").height
        cf_topk = read_table(Path(ups["gcl"].path), "cf_topk")
        rr = ups.get("rerank")
        scores = roles = None
        if rr is not None and is_complete(Path(rr.path), verify=False):
            scores, roles = read_table(Path(rr.path), "rerank_scores"), read_table(Path(rr.path), "rerank_users")
        k = rc.candidates if scores is not None and scores.height else 0
        users = roles["user"].to_list() if roles is not None else cf_topk["user"].unique().to_list()
        holdout = (roles.filter(pl.col("role") == "holdout")["user"].to_list() if roles is not None else [])
        truth = {s: user_items(inter, s, n_users, n_items) for s in ("valid", "test")}
        ks = sorted(set(cfg.evaluate.topk) | {20})
        mat = CandidateMatrix.build(cf_topk, scores, k, users)
        # validation numbers come from the held-out users: the reranker was trained on the others' labels
        mat_valid = CandidateMatrix.build(cf_topk, scores, k, holdout) if holdout else mat
        # testing ranks every item without a training or validation positive (DESIGN.md decision 12)
        split_args = {"valid": (mat_valid, truth["valid"], None), "test": (mat, truth["test"], truth["valid"])}

        variants = {"cf": (1.0, rc.tau)}
        grid = None
        if k:
            variants["cf+rerank"] = (rc.alpha, rc.tau)
            if rc.grid_search and holdout:
                a, t, grid = grid_search(mat_valid, truth["valid"], rc.alpha_grid, rc.tau_grid)
                variants["cf+rerank (tuned)"] = (a, t)
                sd.write_table("grid", grid)
            variants["rerank only"] = (0.0, rc.tau)
        rows = []
        for name, (alpha, tau) in variants.items():
            for split, (m, tr, ex) in split_args.items():
                for (metric, kk), v in fusion_metrics(m, alpha, tau, tr, ex, ks).items():
                    rows.append({"variant": name, "split": split, "metric": metric, "k": kk, "value": v,
                                 "alpha": alpha, "tau": tau})
        metrics = pl.DataFrame(rows, schema={"variant": pl.String, "split": pl.String, "metric": pl.String,
                                             "k": pl.Int32, "value": pl.Float64, "alpha": pl.Float64,
                                             "tau": pl.Float64})
        sd.write_table("metrics", metrics)

        def val(variant: str, split: str, metric: str, kk: int = 20) -> float:
            return metrics.filter((pl.col("variant") == variant) & (pl.col("split") == split) &
                                  (pl.col("metric") == metric) & (pl.col("k") == kk))["value"].item()

        head, step = "cf", Step("rerank", "off", False, False, "the rerank stage is not part of this run")
        if k:
            fused = "cf+rerank (tuned)" if "cf+rerank (tuned)" in variants else "cf+rerank"
            cand, base = val(fused, "valid", "ndcg"), val("cf", "valid", "ndcg")
            t = paired_users(fusion_user_metrics(mat_valid, *variants[fused], truth["valid"])[1]["ndcg"],
                             fusion_user_metrics(mat_valid, *variants["cf"], truth["valid"])[1]["ndcg"],
                             cfg.gate.resamples)
            ok = beats(cand, base, cfg.gate.min_gain) and above_noise(t, cfg.gate)
            reason = (f"validation NDCG@20 of {len(holdout)} held-out users {cand:.4f} vs CF {base:.4f} "
                      f"({gain(cand, base):+.2%}, p={format_p(t.p)}{mark(t.p)})")
            if ok or not cfg.gate.enabled:
                head = fused
                reason += "" if ok else "; kept because gate.enabled is false"
            else:
                needs = f"> {cfg.gate.min_gain:+.2%}" + (f" with p < {cfg.gate.max_p:g}" if cfg.gate.max_p < 1 else "")
                reason += f": reranker left out (needs {needs})"
            parts = cold_warm(inter, users, cfg.augment.cold_threshold)
            seg = {"": users, **{f"_{k}": v for k, v in parts.items()}}
            numbers = {"valid_recall@20": val(fused, "valid", "recall"), "valid_ndcg@20": cand,
                       "valid_scope": f"{len(holdout)} held-out users",
                       **_test_vs_control(mat, variants[fused], truth, Path(ups["control"].path), cfg.gate)}
            for name, us in seg.items():
                if not us:
                    continue
                m = fusion_metrics(CandidateMatrix.build(cf_topk, scores, k, us), variants[fused][0],
                                   variants[fused][1], truth["test"], truth["valid"], [20])
                numbers[f"test_recall@20{name}"], numbers[f"test_ndcg@20{name}"] = m[("recall", 20)], m[("ndcg", 20)]
            step = Step("rerank", fused, True, head != "cf", reason, numbers)

        # the run's product: top-N per user from the ranking chosen above (fused where the reranker was kept)
        rec = recommendations(cf_topk, inter, read_table(prep, "users"), read_table(prep, "items"), cfg.recommend.n,
                              scores, k if head != "cf" else 0, variants[head][0], variants[head][1], users)
        sd.write_table("recommendations", rec)
        gcl_manifest = read_manifest(Path(ups["gcl"].path)) or {}
        gcl_meta = gcl_manifest.get("meta", {})
        rr_meta = (read_manifest(Path(rr.path)) or {}).get("meta", {}) if rr is not None and scores is not None else {}
        meta = {"headline_variant": head, "candidates": k, "alpha": variants[head][0], "tau": variants[head][1],
                "config_alpha": rc.alpha, "config_tau": rc.tau, "users": len(users), "holdout_users": len(holdout),
                "test_recall@20": val(head, "test", "recall"), "test_ndcg@20": val(head, "test", "ndcg"),
                "cf_test_recall@20": val("cf", "test", "recall"), "cf_test_ndcg@20": val("cf", "test", "ndcg"),
                "valid_ndcg@20": val(head, "valid", "ndcg"), "cf_valid_ndcg@20": val("cf", "valid", "ndcg"),
                "reranker": rr_meta.get("model"), "backbone": gcl_meta.get("backbone"),
                "rank_level": gcl_meta.get("rank_level"), "data_level": gcl_meta.get("data_level"),
                "rerank_level": head != "cf", "levels": [*gcl_meta.get("levels", []), step.as_row()],
                "control_test_recall@20": gcl_meta.get("control_test_recall@20"),
                "control_test_ndcg@20": gcl_meta.get("control_test_ndcg@20"),
                "recommendations": {"n": cfg.recommend.n, "users": rec["user"].n_unique(), "rows": rec.height,
                                    "ranking": head},
                "fingerprints": dict(plan.fingerprints)}  # the run's stage folders, for `lagcl recommend`
        plots = [metrics_plot(metrics, sd.file_path("metrics.png"), cfg.data.name)]
        if grid is not None:
            plots.append(grid_plot(grid, sd.file_path("grid.png")))
        report = report_markdown(cfg, meta, metrics, grid, gcl_meta, rr_meta, [p.name for p in plots])
        if "metrics.parquet" in gcl_manifest.get("files", {}):
            report += protocols_markdown(read_table(Path(ups["gcl"].path), "metrics"), gcl_meta.get("variant"))
        sd.file_path("report.md").write_text(report)
        meta["stage_seconds"] = round(time.time() - t0, 2)
        sd.finish(meta)
    for line in format_chain(meta["levels"]):
        log.info("evaluate chain:%s", line)
    log.info("evaluate: %s test Recall@20 %.4f NDCG@20 %.4f (CF %.4f / %.4f) over %d users, alpha %.2f tau %.2f",
             head, meta["test_recall@20"], meta["test_ndcg@20"], meta["cf_test_recall@20"], meta["cf_test_ndcg@20"],
             meta["users"], meta["alpha"], meta["tau"])
    return ref



def _test_vs_control(mat: CandidateMatrix, fusion: tuple[float, float], truth: dict, control_dir: Path, gate
                     ) -> dict:
    """The fused ranking's test Recall/NDCG@20 against the control's, paired over the same users (TEST_KEYS)."""
    if not is_complete(control_dir, verify=False) or "per_user.parquet" not in (read_manifest(control_dir) or {}).get(
            "files", {}):
        return {}  # no control per-user table (a gcl stage built outside a pipeline run): no paired test
    users, per = fusion_user_metrics(mat, *fusion, truth["test"], truth["valid"])
    ctrl = read_table(control_dir, "per_user").filter((pl.col("variant") == "control") & (pl.col("split") == "test"))
    fused = pl.DataFrame({"user": users.astype("int32"), "recall_f": per["recall"], "ndcg_f": per["ndcg"]})
    both = fused.join(ctrl.select(pl.col("user").cast(pl.Int32), "recall", "ndcg"), on="user").sort("user")
    out = {}
    for m in ("recall", "ndcg"):
        t = paired_users(both[f"{m}_f"].to_numpy(), both[m].to_numpy(), gate.resamples)
        out.update({f"test_{m}@20_diff": t.diff, f"test_{m}@20_lo": t.lo, f"test_{m}@20_hi": t.hi,
                    f"test_{m}@20_p": t.p})
    return out


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


# --- presentation: the report and its plots -------------------------------------------------------
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
    if grid is not None:
        lines += ["", f"Grid search on validation (held-out users): alpha = {meta['alpha']:g}, tau = {meta['tau']:g} "
                  f"(configured: alpha = {meta['config_alpha']:g}, tau = {meta['config_tau']:g})."]
    if rr_meta:
        lines += ["", f"Reranker: {rr_meta.get('train_pairs')} training pairs ({rr_meta.get('train_positives')} "
                  f"positive), {rr_meta.get('train_seconds')} s training, {rr_meta.get('scored_pairs')} pairs scored "
                  f"in {rr_meta.get('score_seconds')} s; prompts from {rr_meta.get('profiles')}."]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)

"""The evaluate stage's work behind one call: base CF and CF + reranker side by side (eq. 19-21) with all-rank
Recall/NDCG, the (alpha, tau) grid search on the held-out users, the rerank level's gate, the test against
the control, the `recommendations` table, and the report with its plots.

The reranker is kept (the headline) only when the tuned fusion beats CF on the held-out users' validation
NDCG@20 above the noise (gate.min_gain and gate.max_p, the paired test of lagcl/stats.py; docs/design.md 13); the
report shows the whole chain control -> + data -> + rank -> + rerank."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from lagcl.artifacts import StageDir
from lagcl.augment import cold_warm
from lagcl.config import Config, GateConfig
from lagcl.gate import Step, above_noise, beats, gain
from lagcl.recommend import recommendations
from lagcl.report import grid_plot, metrics_plot, protocols_markdown, report_markdown
from lagcl.rerank.fusion import CandidateMatrix, FusedUsers, fusion_metrics, fusion_users, grid_search, user_items
from lagcl.stats import format_p, mark, paired_users


@dataclass(frozen=True)
class EvaluateInputs:
    """prepare's tables, the gcl stage's CF candidates and what the optional upstreams left (None / {} where a
    stage is off or not built)."""

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    cf_topk: pl.DataFrame
    scores: pl.DataFrame | None  # rerank_scores
    roles: pl.DataFrame | None  # rerank_users: (user, role) with role "train" or "holdout"
    control_per_user: pl.DataFrame | None
    gcl_meta: dict
    gcl_metrics: pl.DataFrame | None
    rerank_meta: dict


def evaluate(sd: StageDir, cfg: Config, x: EvaluateInputs, fingerprints: dict[str, str]) -> dict:
    """Write `metrics`, `grid` (with the grid search), `recommendations`, the plots and report.md into `sd`;
    returns the manifest meta (the headline, the chain with the rerank step, and the run's `fingerprints`, which
    `lagcl recommend` follows)."""
    rc = cfg.rerank
    inter, cf_topk, scores, roles = x.interactions, x.cf_topk, x.scores, x.roles
    n_users, n_items = x.users.height, x.items.height
    k = rc.candidates if scores is not None and scores.height else 0
    users = roles["user"].to_list() if roles is not None else cf_topk["user"].unique().to_list()
    holdout = (roles.filter(pl.col("role") == "holdout")["user"].to_list() if roles is not None else [])
    truth = {s: user_items(inter, s, n_users, n_items) for s in ("valid", "test")}
    ks = sorted(set(cfg.evaluate.topk) | {20})
    mat = CandidateMatrix.build(cf_topk, scores, k, users)
    # validation numbers come from the held-out users: the reranker was trained on the others' labels
    mat_valid = CandidateMatrix.build(cf_topk, scores, k, holdout) if holdout else mat
    # testing ranks every item without a training or validation positive (docs/design.md decision 12)
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
    # each ranking once: the metrics are its per-user values' means, the paired tests below use the values
    per_user = {(name, split): fusion_users(m, alpha, tau, tr, ex, ks)
                for name, (alpha, tau) in variants.items() for split, (m, tr, ex) in split_args.items()}
    rows = []
    for name, (alpha, tau) in variants.items():
        for split in split_args:
            for (metric, kk), v in per_user[(name, split)].means().items():
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
        t = paired_users(per_user[(fused, "valid")].values("ndcg"), per_user[("cf", "valid")].values("ndcg"),
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
                   **paired_with_control(per_user[(fused, "test")], x.control_per_user, cfg.gate)}
        for name, us in seg.items():
            if not us:
                continue
            m = fusion_metrics(CandidateMatrix.build(cf_topk, scores, k, us), variants[fused][0],
                               variants[fused][1], truth["test"], truth["valid"], [20])
            numbers[f"test_recall@20{name}"], numbers[f"test_ndcg@20{name}"] = m[("recall", 20)], m[("ndcg", 20)]
        step = Step("rerank", fused, True, head != "cf", reason, numbers)

    # the run's product: top-N per user from the ranking chosen above (fused where the reranker was kept)
    rec = recommendations(cf_topk, inter, x.users, x.items, cfg.recommend.n,
                          scores, k if head != "cf" else 0, variants[head][0], variants[head][1], users)
    sd.write_table("recommendations", rec)
    gcl_meta, rr_meta = x.gcl_meta, (x.rerank_meta if scores is not None else {})
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
            "fingerprints": dict(fingerprints)}  # the run's stage folders, for `lagcl recommend`
    plots = [metrics_plot(metrics, sd.file_path("metrics.png"), cfg.data.name)]
    if grid is not None:
        plots.append(grid_plot(grid, sd.file_path("grid.png")))
    report = report_markdown(cfg, meta, metrics, grid, gcl_meta, rr_meta, [p.name for p in plots])
    if x.gcl_metrics is not None:
        report += protocols_markdown(x.gcl_metrics, gcl_meta.get("variant"))
    sd.file_path("report.md").write_text(report)
    return meta


def paired_with_control(fused_test: FusedUsers, control_per_user: pl.DataFrame | None, gate: GateConfig) -> dict:
    """The fused ranking's test Recall/NDCG@20 against the control's, paired over the same users (TEST_KEYS)."""
    if control_per_user is None:
        return {}  # no control per-user table (a gcl stage built outside a pipeline run): no paired test
    ctrl = control_per_user.filter((pl.col("variant") == "control") & (pl.col("split") == "test"))
    fused = pl.DataFrame({"user": fused_test.users.astype("int32"), "recall_f": fused_test.values("recall"),
                          "ndcg_f": fused_test.values("ndcg")})
    both = fused.join(ctrl.select(pl.col("user").cast(pl.Int32), "recall", "ndcg"), on="user").sort("user")
    out = {}
    for m in ("recall", "ndcg"):
        t = paired_users(both[f"{m}_f"].to_numpy(), both[m].to_numpy(), gate.resamples)
        out.update({f"test_{m}@20_diff": t.diff, f"test_{m}@20_lo": t.lo, f"test_{m}@20_hi": t.hi,
                    f"test_{m}@20_p": t.p})
    return out

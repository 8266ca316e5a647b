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
from lagcl.chain.report import chain_plot, grid_plot, metrics_plot, protocols_markdown, report_markdown
from lagcl.chain.rule import Step, verdict
from lagcl.config import Config, GateConfig
from lagcl.evaluate import UserItems
from lagcl.meta import TEST_NDCG, TEST_RECALL, VALID_RECALL, Headline, metric_key
from lagcl.recommend import PROTOCOL, excluded_items, recommendations
from lagcl.rerank.fusion import (CandidateMatrix, FusedUsers, fusion_metrics, fusion_users, grid_search,
                                 metrics_fusion_cannot_move, user_items)
from lagcl.stats import paired_users


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


Variants = dict[str, tuple[float, float]]  # ranking name -> (alpha, tau) of eq. 21 ("cf" is alpha = 1)
PerUser = dict[tuple[str, str], FusedUsers]  # (variant, split) -> the ranking's per-user Recall/NDCG


@dataclass(frozen=True)
class Scope:
    """Who and what every ranking is scored on: the evaluated users and the held-out ones, the K reranked
    candidates (0 without reranker scores), each split's positives, the cut-offs, and per split the
    candidate matrix with its positives and the items it excludes."""

    k: int
    users: list[int]
    holdout: list[int]
    truth: dict[str, UserItems]
    ks: list[int]
    splits: dict[str, tuple[CandidateMatrix, UserItems, UserItems | None]]


def evaluate(sd: StageDir, cfg: Config, x: EvaluateInputs, fingerprints: dict[str, str]) -> dict:
    """Write `metrics`, `grid` (with the grid search), `recommendations`, the plots and report.md into `sd`;
    returns the manifest meta (the headline, the chain with the rerank step, and the run's `fingerprints`, which
    `lagcl recommend` follows)."""
    scope = evaluation_scope(cfg, x)
    variants, grid = fusion_variants(cfg, scope)
    if grid is not None:
        sd.write_table("grid", grid)
    per_user = rank_variants(scope, variants)
    metrics = metrics_table(variants, per_user)
    sd.write_table("metrics", metrics)
    head, step = rerank_step(cfg, x, scope, variants, per_user, metrics)
    # the run's product: top-N per user from the ranking chosen above (fused where the reranker was kept)
    rec = recommendations(x.cf_topk, x.interactions, x.users, x.items, cfg.recommend.n, x.scores,
                          scope.k if head != "cf" else 0, variants[head][0], variants[head][1], scope.users,
                          cfg.recommend.exclude)
    sd.write_table("recommendations", rec)
    meta = evaluate_meta(cfg, x, scope, variants, metrics, head, step, rec, fingerprints)
    write_report(sd, cfg, x, meta, metrics, grid)
    return meta


def evaluation_scope(cfg: Config, x: EvaluateInputs) -> Scope:
    k = cfg.rerank.candidates if x.scores is not None and x.scores.height else 0
    roles = x.roles
    users = roles["user"].to_list() if roles is not None else x.cf_topk["user"].unique().to_list()
    holdout = (roles.filter(pl.col("role") == "holdout")["user"].to_list() if roles is not None else [])
    truth = {s: user_items(x.interactions, s, x.users.height, x.items.height) for s in ("valid", "test")}
    ks = sorted(set(cfg.evaluate.topk) | {20})
    mat = CandidateMatrix.build(x.cf_topk, x.scores, k, users)
    # validation numbers come from the held-out users: the reranker was trained on the others' labels
    mat_valid = CandidateMatrix.build(x.cf_topk, x.scores, k, holdout) if holdout else mat
    # testing ranks every item without a training or validation positive (docs/design.md decision 12)
    splits = {"valid": (mat_valid, truth["valid"], None), "test": (mat, truth["test"], truth["valid"])}
    return Scope(k, users, holdout, truth, ks, splits)


def fusion_variants(cfg: Config, scope: Scope) -> tuple[Variants, pl.DataFrame | None]:
    """The rankings compared: CF alone, and with reranker scores the configured fusion, the one tuned by the
    (alpha, tau) grid search on the held-out users (returned with its grid) and the reranker alone."""
    rc = cfg.fusion
    variants = {"cf": (1.0, rc.tau)}
    grid = None
    if scope.k:
        variants["cf+rerank"] = (rc.alpha, rc.tau)
        if rc.grid_search and scope.holdout:
            mat_valid, valid, _ = scope.splits["valid"]
            a, t, grid = grid_search(mat_valid, valid, rc.alpha_grid, rc.tau_grid)
            variants["cf+rerank (tuned)"] = (a, t)
        variants["rerank only"] = (0.0, rc.tau)
    return variants, grid


def rank_variants(scope: Scope, variants: Variants) -> PerUser:
    """Each ranking once per split: the metrics are its per-user values' means, the paired tests use the values."""
    return {(name, split): fusion_users(m, alpha, tau, tr, ex, scope.ks)
            for name, (alpha, tau) in variants.items() for split, (m, tr, ex) in scope.splits.items()}


def metrics_table(variants: Variants, per_user: PerUser) -> pl.DataFrame:
    rows = []
    for name, (alpha, tau) in variants.items():
        for split in ("valid", "test"):
            for (metric, kk), v in per_user[(name, split)].means().items():
                rows.append({"variant": name, "split": split, "metric": metric, "k": kk, "value": v,
                             "alpha": alpha, "tau": tau})
    return pl.DataFrame(rows, schema={"variant": pl.String, "split": pl.String, "metric": pl.String,
                                      "k": pl.Int32, "value": pl.Float64, "alpha": pl.Float64, "tau": pl.Float64})


def metric_value(metrics: pl.DataFrame, variant: str, split: str, metric: str, kk: int = 20) -> float:
    return metrics.filter((pl.col("variant") == variant) & (pl.col("split") == split) &
                          (pl.col("metric") == metric) & (pl.col("k") == kk))["value"].item()


def rerank_step(cfg: Config, x: EvaluateInputs, scope: Scope, variants: Variants, per_user: PerUser,
                metrics: pl.DataFrame) -> tuple[str, Step]:
    """The headline ranking and the chain's rerank step: the fusion chosen on validation (the tuned one where
    the grid search ran), kept when the gate passes it, with its test numbers."""
    if not scope.k:
        return "cf", Step("rerank", "off", False, False, "the rerank stage is not part of this run")
    fused = "cf+rerank (tuned)" if "cf+rerank (tuned)" in variants else "cf+rerank"
    cand = metric_value(metrics, fused, "valid", "ndcg")
    kept, reason = gate_reranker(cfg.gate, cand, metric_value(metrics, "cf", "valid", "ndcg"), per_user, fused,
                                 len(scope.holdout))
    numbers = {VALID_RECALL: metric_value(metrics, fused, "valid", "recall"), metric_key("valid", "ndcg"): cand,
               "valid_scope": f"{len(scope.holdout)} held-out users",
               **paired_with_control(per_user[(fused, "test")], x.control_per_user, cfg.gate),
               **segment_test_numbers(cfg, x, scope, variants[fused])}
    return (fused if kept else "cf"), Step("rerank", fused, True, kept, reason, numbers)


def gate_reranker(gate: GateConfig, cand: float, base: float, per_user: PerUser, fused: str,
                  n_holdout: int) -> tuple[bool, str]:
    """Whether the fusion is kept over CF (validation NDCG@20 above gate.min_gain and the noise, or the gate
    off; lagcl/chain/rule.py `verdict`), and the reason the chain shows."""
    t = paired_users(per_user[(fused, "valid")].values("ndcg"), per_user[("cf", "valid")].values("ndcg"),
                     gate.resamples)
    return verdict(gate, cand, base, t, f"validation NDCG@20 of {n_holdout} held-out users", "CF", "reranker left out")


def segment_test_numbers(cfg: Config, x: EvaluateInputs, scope: Scope, alpha_tau: tuple[float, float]) -> dict:
    """The fusion's test Recall/NDCG@20 over all evaluated users and their cold-start and warm parts."""
    parts = cold_warm(x.interactions, scope.users, cfg.augment.cold_threshold)
    out = {}
    for name, us in {None: scope.users, **parts}.items():
        if not us:
            continue
        m = fusion_metrics(CandidateMatrix.build(x.cf_topk, x.scores, scope.k, us), alpha_tau[0], alpha_tau[1],
                           scope.truth["test"], scope.truth["valid"], [20])
        out[metric_key("test", segment=name)], out[metric_key("test", "ndcg", segment=name)] = m[("recall", 20)], m[("ndcg", 20)]
    return out


def evaluate_meta(cfg: Config, x: EvaluateInputs, scope: Scope, variants: Variants, metrics: pl.DataFrame,
                  head: str, step: Step, rec: pl.DataFrame, fingerprints: dict[str, str]) -> dict:
    def val(variant: str, split: str, metric: str) -> float:
        return metric_value(metrics, variant, split, metric)

    rc, gcl_meta = cfg.fusion, x.gcl_meta
    return {**Headline(stage="evaluate", backbone=gcl_meta.get("backbone"), test_recall=val(head, "test", "recall"),
                       test_ndcg=val(head, "test", "ndcg"), valid_recall=None,
                       control_test_recall=gcl_meta.get(metric_key("test", of="control")),
                       control_test_ndcg=gcl_meta.get(metric_key("test", "ndcg", of="control")),
                       data_level=gcl_meta.get("data_level"), rank_level=gcl_meta.get("rank_level"),
                       rerank_level=head != "cf", variant=head, groups=None,
                       levels=[*gcl_meta.get("levels", []), step.as_row()]).as_meta(),
            "candidates": scope.k, "alpha": variants[head][0], "tau": variants[head][1],
            "config_alpha": rc.alpha, "config_tau": rc.tau, "fusion": fusion_choice(variants, head, step),
            "cannot_move": [f"{m}@{kk}" for m, kk in metrics_fusion_cannot_move(scope.k, scope.ks)],
            "users": len(scope.users),
            "holdout_users": len(scope.holdout),
            metric_key("test", of="cf"): val("cf", "test", "recall"), metric_key("test", "ndcg", of="cf"): val("cf", "test", "ndcg"),
            metric_key("valid", "ndcg"): val(head, "valid", "ndcg"), metric_key("valid", "ndcg", of="cf"): val("cf", "valid", "ndcg"),
            "reranker": rerank_meta(x).get("model"),
            "recommendations": {"n": cfg.recommend.n, "users": rec["user"].n_unique(), "rows": rec.height,
                                "ranking": head, **table_protocol(cfg, x, scope, variants, head)},
            "fingerprints": dict(fingerprints)}  # the run's stage folders, for `lagcl recommend`


def fusion_choice(variants: Variants, head: str, step: Step) -> dict:
    """Where the headline's (alpha, tau) come from: the fusion the rerank step judged (`variant`, its alpha and
    tau, `chosen_by` the grid search or the configuration) and whether the headline is it or the fallback, CF
    alone (alpha = 1: eq. 19 gives the reranker no weight, so tau changes nothing), with the reason."""
    fused = step.variant if step.trained else None
    out = {"variant": fused, "alpha": variants[fused][0] if fused else None,
           "tau": variants[fused][1] if fused else None,
           "chosen_by": ("grid search on the held-out users' validation NDCG@20" if fused == "cf+rerank (tuned)"
                         else "configuration (fusion.alpha, fusion.tau)" if fused else None),
           "kept": head != "cf", "fallback": None}
    if head == "cf":
        why = ("the reranker was left out by the validation gate" if fused else step.reason)
        out["fallback"] = (f"CF alone (alpha = 1, tau has no effect): {why}")
    return out


def table_protocol(cfg: Config, x: EvaluateInputs, scope: Scope, variants: Variants, head: str) -> dict:
    """Which items the `recommendations` table leaves out (recommend.exclude), the test protocol that masks the
    same ones, and the headline ranking's test Recall/NDCG@20 of the evaluated users under it: what the
    table's first 20 rows per user reproduce (under `positives` the headline's own test_recall@20 / ndcg@20)."""
    exclude = cfg.recommend.exclude
    known = excluded_items(x.interactions, exclude, x.users.height, x.items.height)
    alpha, tau = variants[head]
    m = fusion_metrics(CandidateMatrix.build(x.cf_topk, x.scores, scope.k if head != "cf" else 0, scope.users),
                       alpha, tau, scope.truth["test"], known, [20])
    return {"exclude": exclude, "protocol": PROTOCOL[exclude], TEST_RECALL: m[("recall", 20)],
            TEST_NDCG: m[("ndcg", 20)]}


def rerank_meta(x: EvaluateInputs) -> dict:
    return x.rerank_meta if x.scores is not None else {}


def write_report(sd: StageDir, cfg: Config, x: EvaluateInputs, meta: dict, metrics: pl.DataFrame,
                 grid: pl.DataFrame | None) -> None:
    plots = [chain_plot(meta["levels"], sd.file_path("chain.png"), cfg.data.name, meta),
             metrics_plot(metrics, sd.file_path("metrics.png"), cfg.data.name, meta)]
    if grid is not None:
        plots.append(grid_plot(grid, sd.file_path("grid.png"), meta))
    report = report_markdown(cfg, meta, metrics, grid, x.gcl_meta, rerank_meta(x), [p.name for p in plots])
    if x.gcl_metrics is not None:
        report += protocols_markdown(x.gcl_metrics, x.gcl_meta.get("variant"))
    sd.file_path("report.md").write_text(report)


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
        out.update({metric_key("test", m, stat=q): getattr(t, q) for q in ("diff", "lo", "hi", "p")})
    return out

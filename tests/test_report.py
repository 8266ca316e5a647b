"""The evaluate stage's report (lagcl/chain/report.py): it says when the headline's alpha/tau are a fallback, which
metrics reranking cannot move (from the run's own candidate count), and draws the chain with its intervals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from lagcl.chain.report import chain_plot, chain_points, metrics_plot, report_markdown
from lagcl.chain.rerank_level import fusion_choice
from lagcl.chain.rule import Step
from lagcl.rerank.fusion import CandidateMatrix, fusion_metrics, metrics_fusion_cannot_move, user_items


@pytest.mark.parametrize("k, expected", [(20, [("recall", 20), ("recall", 50)]), (50, [("recall", 50)]),
                                         (10, [("recall", 10), ("recall", 20), ("recall", 50)]), (0, [])])
def test_recall_at_n_cannot_move_for_every_n_at_or_above_the_candidate_count(k, expected):
    assert metrics_fusion_cannot_move(k, [10, 20, 50]) == expected


def test_a_fusion_of_the_top_k_leaves_recall_at_k_and_beyond_equal_to_cf_and_moves_the_rest():
    rng = np.random.default_rng(3)
    n_users, n_items, k = 40, 60, 5
    lists = {u: rng.permutation(n_items)[:30] for u in range(n_users)}  # each user's CF ranking, best first
    top = pl.DataFrame([{"user": u, "item": int(i), "score": float(30 - r), "rank": r + 1}
                        for u, items in lists.items() for r, i in enumerate(items)])
    scores = top.filter(pl.col("rank") <= k).with_columns(score=pl.Series(rng.normal(size=n_users * k)))
    # test positives spread over each user's first 12 CF items, inside and outside C_u
    inter = pl.DataFrame([{"user": u, "item": int(items[j]), "split": "test", "sign": 1}
                          for u, items in lists.items() for j in rng.choice(12, 4, replace=False)])
    truth = user_items(inter, "test", n_users, n_items)
    mat = CandidateMatrix.build(top.with_columns(pl.col("item").cast(pl.Int32)), scores, k)
    cf = fusion_metrics(mat, 1.0, 1.0, truth, ks=(3, 5, 10))
    fused = fusion_metrics(mat, 0.0, 1.0, truth, ks=(3, 5, 10))  # the reranker alone: the largest reordering
    for metric in metrics_fusion_cannot_move(k, (3, 5, 10)):
        assert fused[metric] == cf[metric]
    assert fused[("recall", 3)] != cf[("recall", 3)] and fused[("ndcg", 5)] != cf[("ndcg", 5)]


def _metrics() -> pl.DataFrame:
    rows = []
    for variant, alpha, tau, r20 in (("cf", 1.0, 1.0, 0.35), ("cf+rerank", 0.5, 1.0, 0.35),
                                     ("cf+rerank (tuned)", 0.7, 0.3, 0.35), ("rerank only", 0.0, 1.0, 0.35)):
        for split in ("valid", "test"):
            for metric in ("recall", "ndcg"):
                for kk in (10, 20, 50):
                    rows.append({"variant": variant, "split": split, "metric": metric, "k": kk,
                                 "value": r20 if (metric, kk) == ("recall", 20) else 0.2, "alpha": alpha, "tau": tau})
    return pl.DataFrame(rows)


VARIANTS = {"cf": (1.0, 1.0), "cf+rerank": (0.5, 1.0), "cf+rerank (tuned)": (0.7, 0.3), "rerank only": (0.0, 1.0)}


def _meta(kept: bool) -> dict:
    step = Step("rerank", "cf+rerank (tuned)", True, kept, "validation NDCG@20 ...")
    head = "cf+rerank (tuned)" if kept else "cf"
    return {"headline_variant": head, "candidates": 20, "alpha": VARIANTS[head][0], "tau": VARIANTS[head][1],
            "config_alpha": 0.5, "config_tau": 1.0, "fusion": fusion_choice(VARIANTS, head, step),
            "cannot_move": ["recall@20", "recall@50"], "users": 10, "holdout_users": 4, "levels": [],
            "test_recall@20": 0.35, "test_ndcg@20": 0.2, "cf_test_recall@20": 0.35, "cf_test_ndcg@20": 0.2}


def test_a_left_out_reranker_makes_the_headline_the_cf_fallback_and_keeps_the_grids_alpha_and_tau_apart():
    f = fusion_choice(VARIANTS, "cf", Step("rerank", "cf+rerank (tuned)", True, False, "..."))
    assert (f["variant"], f["alpha"], f["tau"], f["kept"]) == ("cf+rerank (tuned)", 0.7, 0.3, False)
    assert f["chosen_by"].startswith("grid search") and f["fallback"].startswith("CF alone (alpha = 1")
    kept = fusion_choice(VARIANTS, "cf+rerank (tuned)", Step("rerank", "cf+rerank (tuned)", True, True, "..."))
    assert kept["fallback"] is None and kept["kept"]
    off = fusion_choice({"cf": (1.0, 1.0)}, "cf", Step("rerank", "off", False, False, "the rerank stage is not part"))
    assert off["variant"] is None and "not part" in off["fallback"]


def test_the_report_names_the_grids_choice_and_the_fallback_as_its_table_shows_them():
    text = report_markdown(SimpleNamespace(data=SimpleNamespace(name="toy")), _meta(kept=False), _metrics(), None,
                           {"backbone": "lightgcn"}, {}, [])
    assert "alpha = 0.7, tau = 0.3, chosen by the grid search" in text
    assert "**Fallback:** the headline ranking is CF alone (alpha = 1, tau has no effect)" in text
    assert "tau = 1 (configured" not in text and "alpha = 1, tau = 1" not in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[1].startswith("| **cf** (headline, fallback) | 1.00 | - |")  # tau has no effect at alpha = 1
    assert rows[5].startswith("| cf+rerank (tuned) (left out) | 0.70 | 0.3 | grid search")
    assert "Recall@20, Recall@50 cannot move" in text and "|C_u| = 20" in text


def test_a_kept_reranker_is_the_headline_without_a_fallback():
    text = report_markdown(SimpleNamespace(data=SimpleNamespace(name="toy")), _meta(kept=True), _metrics(), None,
                           {"backbone": "lightgcn"}, {}, [])
    assert "Fallback" not in text and "The reranker was kept" in text
    assert "| **cf+rerank (tuned)** (headline) | 0.70 | 0.3 |" in text


LEVELS = [
    {"level": "control", "variant": "control", "trained": True, "kept": True, "test_recall@20": 0.35,
     "test_ndcg@20": 0.30},
    {"level": "data", "variant": "off", "trained": False, "kept": False, "test_recall@20": None},
    {"level": "rank", "variant": "rank", "trained": True, "kept": False, "test_recall@20": 0.34, "test_ndcg@20": 0.29,
     "test_recall@20_lo": -0.02, "test_recall@20_hi": -0.004, "test_ndcg@20_lo": -0.015, "test_ndcg@20_hi": -0.002},
    {"level": "rerank", "variant": "cf+rerank (tuned)", "trained": True, "kept": True, "test_recall@20": 0.35,
     "test_ndcg@20": 0.31, "test_recall@20_lo": 0.0, "test_recall@20_hi": 0.0, "test_ndcg@20_lo": 0.004,
     "test_ndcg@20_hi": 0.016},
]


def test_the_chain_points_carry_each_steps_status_and_its_interval_placed_on_the_control():
    recall = chain_points(LEVELS, "recall")
    assert [p["status"] for p in recall] == ["control", "not trained", "turned down", "kept"]
    assert recall[0]["lo"] is None and recall[1]["value"] is None
    assert recall[2]["lo"] == pytest.approx(0.33) and recall[2]["hi"] == pytest.approx(0.346)
    ndcg = chain_points(LEVELS, "ndcg")
    assert ndcg[3]["lo"] == pytest.approx(0.304) and ndcg[3]["hi"] == pytest.approx(0.316)


def test_the_chain_and_metrics_plots_are_written_as_pngs(tmp_path):
    meta = _meta(kept=False)
    for path in (chain_plot(LEVELS, tmp_path / "chain.png", "toy", meta),
                 metrics_plot(_metrics(), tmp_path / "metrics.png", "toy", meta)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000

"""Score fusion (eq. 19-21, docs/design.md decision 11) and the all-rank lists it is evaluated on."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from lagcl.evaluate import UserItems
from lagcl.rerank.fusion import CandidateMatrix, fuse, fusion_metrics, grid_search, ranked_lists, softmax


def cf_topk(rows: dict[int, list[tuple[int, float]]]) -> pl.DataFrame:
    """cf_topk(user, item, score, rank) from {user: [(item, score), ...] best first}."""
    out = [{"user": u, "item": i, "score": s, "rank": r + 1} for u, lst in rows.items() for r, (i, s) in enumerate(lst)]
    return pl.DataFrame(out, schema={"user": pl.Int32, "item": pl.Int32, "score": pl.Float64, "rank": pl.Int32})


def scores(rows: dict[int, list[tuple[int, float]]]) -> pl.DataFrame:
    out = [{"user": u, "item": i, "score": s} for u, lst in rows.items() for i, s in lst]
    return pl.DataFrame(out, schema={"user": pl.Int32, "item": pl.Int32, "score": pl.Float64})


def truth(pairs: list[tuple[int, int]], n_users: int = 2, n_items: int = 10) -> UserItems:
    u, i = zip(*pairs)
    return UserItems.from_pairs(torch.tensor(u), torch.tensor(i), n_users, n_items)


def test_fusion_equals_the_hand_computation():
    cf = np.array([[2.0, 1.0, 0.0]])
    llm = np.array([[0.0, 0.0, math.log(4.0)]])
    # tau = 1: softmax(cf) = e^(2,1,0) / (e^2 + e + 1); softmax(llm) = (1, 1, 4) / 6
    z = math.exp(2) + math.exp(1) + 1
    expected = [0.3 * math.exp(2) / z + 0.7 / 6, 0.3 * math.exp(1) / z + 0.7 / 6, 0.3 / z + 0.7 * 4 / 6]
    assert fuse(cf, llm, alpha=0.3, tau=1.0)[0] == pytest.approx(expected, rel=1e-12)
    # tau = 2 halves the logits before the softmax (eq. 20)
    assert softmax(cf, 2.0)[0] == pytest.approx(np.exp([1.0, 0.5, 0.0]) / np.exp([1.0, 0.5, 0.0]).sum())


def test_the_fused_block_is_reordered_and_the_rest_keeps_cf_order():
    top = cf_topk({0: [(5, 3.0), (6, 2.0), (7, 1.0), (8, 0.5), (9, 0.1)]})
    rr = scores({0: [(5, -1.0), (6, 0.0), (7, 5.0)]})          # C_u = top 3; the reranker loves item 7
    mat = CandidateMatrix.build(top, rr, k=3)
    # alpha = 0.3, tau = 1: item 7 fuses to 0.3*0.09 + 0.7*0.99 = 0.72, item 5 to 0.3*0.67 + 0.7*0.0025 = 0.20,
    # item 6 to 0.3*0.24 + 0.7*0.0067 = 0.08
    assert ranked_lists(mat, alpha=0.3, tau=1.0, n=5).tolist() == [[7, 5, 6, 8, 9]]
    assert ranked_lists(mat, alpha=0.0, tau=1.0, n=5).tolist() == [[7, 6, 5, 8, 9]]
    # excluded items leave the list and short lists are padded
    ex = truth([(0, 6)], n_users=1)
    assert ranked_lists(mat, alpha=0.3, tau=1.0, n=6, exclude=ex, pad=-1).tolist() == [[7, 5, 8, 9, -1, -1]]


def test_alpha_one_reproduces_the_cf_ranking_exactly():
    rng = np.random.default_rng(0)
    rows, rr = {}, {}
    for u in range(50):
        items = rng.permutation(200)[:30]
        cf = np.sort(rng.normal(size=30))[::-1]
        cf[3] = cf[4] = cf[5]                      # ties must keep the CF order too
        rows[u] = list(zip(items.tolist(), cf.tolist()))
        rr[u] = [(int(i), float(s)) for i, s in zip(items[:20], rng.normal(size=20) * 10)]
    top = cf_topk(rows)
    mat = CandidateMatrix.build(top, scores(rr), k=20)
    for tau in (0.01, 1.0, 100.0):
        ranked = ranked_lists(mat, alpha=1.0, tau=tau, n=30)
        assert ranked.tolist() == [[i for i, _ in rows[u]] for u in range(50)]


def test_metrics_of_the_fused_lists():
    top = cf_topk({0: [(1, 3.0), (2, 2.0), (3, 1.0)], 1: [(4, 3.0), (5, 2.0), (6, 1.0)]})
    rr = scores({0: [(1, 0.0), (2, 9.0)], 1: [(4, 9.0), (5, 0.0)]})
    mat = CandidateMatrix.build(top, rr, k=2)
    t = truth([(0, 2), (1, 6)])
    cf_only = fusion_metrics(mat, 1.0, 1.0, t, ks=(1, 3))
    reranked = fusion_metrics(mat, 0.0, 1.0, t, ks=(1, 3))
    # CF: user 0 hits at rank 2, user 1 at rank 3; reranked: user 0 hits at rank 1, user 1 still at rank 3
    assert cf_only[("recall", 1)] == 0.0 and reranked[("recall", 1)] == 0.5
    assert cf_only[("ndcg", 3)] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert reranked[("ndcg", 3)] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)


def test_grid_search_picks_the_best_validation_point_and_records_the_grid():
    top = cf_topk({0: [(1, 3.0), (2, 1.0)], 1: [(3, 3.0), (4, 2.9)]})
    rr = scores({0: [(1, 0.0), (2, 1.0)], 1: [(3, 0.0), (4, 1.0)]})
    mat = CandidateMatrix.build(top, rr, k=2)
    t = truth([(0, 2), (1, 4)], n_items=5)
    alpha, tau, grid = grid_search(mat, t, alphas=[0.0, 0.5, 1.0], taus=[1.0, 10.0])
    assert grid.height == 6
    # both users' positive is the CF runner-up that the reranker prefers. User 0's CF margin (2) beats the
    # reranker's (1) at alpha = 0.5 for either tau, so only alpha = 0 puts both positives first; of its two
    # taus (equal value) the smaller wins the tie
    best = grid.filter(pl.col("value") == grid["value"].max())
    assert (alpha, tau) in list(zip(best["alpha"], best["tau"]))
    assert (alpha, tau) == (0.0, 1.0) and grid["value"].max() == pytest.approx(1.0)
    at_half = grid.filter((pl.col("alpha") == 0.5) & (pl.col("tau") == 1.0))["value"].item()
    assert at_half == pytest.approx((1 / math.log2(3) + 1.0) / 2)

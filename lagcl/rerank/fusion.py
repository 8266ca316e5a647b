"""Score fusion (eq. 19-21) and its all-rank evaluation (docs/design.md decisions 11-12).

For each user the first K items of the CF ranking form C_u. Both scores are normalised by a softmax with
temperature tau over C_u (eq. 20; the paper writes it for the reranker score, decision 11 applies it to the
CF score too, so that the two terms of eq. 19 live on the same scale):

    s_final = alpha * softmax(s_cf / tau) + (1 - alpha) * softmax(s_llm / tau)        (eq. 19-20)

C_u is reordered by s_final (eq. 21, ties keep the CF order), and the items outside C_u follow in CF order,
so the list stays an all-rank list and Recall/NDCG@N can be read at any N. alpha = 1 reproduces the CF
ranking exactly, and K = 0 is the CF model alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import polars as pl
import torch

from lagcl.evaluate import UserItems, user_metrics_from_ranked


def softmax(scores: np.ndarray, tau: float) -> np.ndarray:
    """Eq. 20 row-wise: exp(s/tau) / sum over C_u of exp(s/tau) (max-shifted, so large logits do not overflow)."""
    z = scores.astype(np.float64) / tau
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fuse(cf: np.ndarray, llm: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    """Eq. 19: alpha * s_orig + (1 - alpha) * s_llm, both softmax-normalised over C_u (rows)."""
    return alpha * softmax(cf, tau) + (1.0 - alpha) * softmax(llm, tau)


def rerank_order(fused: np.ndarray) -> np.ndarray:
    """Eq. 21: column order of each row by descending fused score; columns are in CF order, so ties keep it."""
    return np.argsort(-fused, axis=1, kind="stable")


@dataclass
class CandidateMatrix:
    """Per evaluated user: the CF ranking (`items`, best first, T >= K columns), CF scores of its first K
    columns (C_u), and the reranker's raw scores of the same K items."""

    users: np.ndarray           # [U]
    items: np.ndarray           # [U, T] CF ranking
    cf: np.ndarray              # [U, K]
    llm: np.ndarray             # [U, K]

    @property
    def k(self) -> int:
        return self.cf.shape[1]

    @classmethod
    def build(cls, cf_topk: pl.DataFrame, rerank_scores: pl.DataFrame | None, k: int,
              users: Iterable[int] | None = None) -> "CandidateMatrix":
        """From `cf_topk(user, item, score, rank)` and `rerank_scores(user, item, score)`. Users come from
        `users` (default: every user of rerank_scores, or of cf_topk when k = 0); each must have a reranker
        score for each of its K candidates."""
        if users is None:
            src = rerank_scores if (rerank_scores is not None and k > 0) else cf_topk
            users = src["user"].unique().sort().to_numpy()
        users = np.asarray(sorted(set(int(u) for u in users)), dtype=np.int64)
        top = cf_topk.filter(pl.col("user").is_in(users.tolist())).sort("user", "rank")
        t = int(top.group_by("user").len()["len"].min()) if top.height else 0
        top = top.filter(pl.col("rank") <= t)
        if top.height != users.size * t:
            raise ValueError("every evaluated user needs a cf_topk list of the same length")
        items = top["item"].to_numpy().astype(np.int64).reshape(users.size, t)
        cf = top["score"].to_numpy().astype(np.float64).reshape(users.size, t)[:, :k]
        if k == 0:
            llm = np.zeros((users.size, 0))
        else:
            block = pl.DataFrame({"user": np.repeat(users, k), "item": items[:, :k].reshape(-1)},
                                 schema={"user": pl.Int64, "item": pl.Int64})
            rs = rerank_scores.select(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64), "score")
            joined = block.join(rs, on=["user", "item"], how="left", maintain_order="left")
            if joined["score"].null_count():
                raise ValueError(f"{joined['score'].null_count()} candidates of the evaluated users have no "
                                 "reranker score (was rerank.candidates changed between the stages?)")
            llm = joined["score"].to_numpy().astype(np.float64).reshape(users.size, k)
        return cls(users, items, cf, llm)


def ranked_lists(mat: CandidateMatrix, alpha: float, tau: float, n: int,
                 exclude: UserItems | None = None, pad: int = -1) -> np.ndarray:
    """Top-n lists [U, n]: C_u reordered by eq. 21, then the rest of the CF ranking; items of `exclude`
    (e.g. validation positives when testing) are removed; short lists are padded with `pad`."""
    items = mat.items.copy()
    if mat.k:
        order = rerank_order(fuse(mat.cf, mat.llm, alpha, tau))
        items[:, :mat.k] = np.take_along_axis(items[:, :mat.k], order, axis=1)
    if exclude is not None:
        banned = exclude.dense(torch.from_numpy(mat.users)).numpy()
        drop = np.take_along_axis(banned, items, axis=1)
        # stable sort on the drop flag moves removed items to the end, keeping the order of the rest
        keep_order = np.argsort(drop, axis=1, kind="stable")
        items = np.take_along_axis(items, keep_order, axis=1)
        items[np.take_along_axis(drop, keep_order, axis=1)] = pad
    if items.shape[1] < n:
        items = np.concatenate([items, np.full((items.shape[0], n - items.shape[1]), pad)], axis=1)
    return items[:, :n]


@dataclass(frozen=True)
class FusedUsers:
    """Per-user Recall@k / NDCG@k of one fused all-rank ranking, over the users of the matrix that have truth
    items: their means are the metrics, the values what the paired tests compare (lagcl/stats.py)."""

    users: np.ndarray
    per: dict[tuple[str, int], torch.Tensor]

    def means(self) -> dict[tuple[str, int], float]:
        return {key: float(v.mean()) if v.numel() else 0.0 for key, v in self.per.items()}

    def values(self, metric: str, k: int = 20) -> np.ndarray:
        return self.per[(metric, k)].numpy()


def fusion_users(mat: CandidateMatrix, alpha: float, tau: float, truth: UserItems, exclude: UserItems | None = None,
                 ks: Iterable[int] = (10, 20, 50)) -> FusedUsers:
    """Rank once (eq. 19-21), measure every user at every k."""
    ks = sorted(ks)
    users, per = user_metrics_from_ranked(*_fused(mat, alpha, tau, truth, exclude, max(ks)), ks)
    return FusedUsers(users.numpy(), per)


def fusion_metrics(mat: CandidateMatrix, alpha: float, tau: float, truth: UserItems,
                   exclude: UserItems | None = None, ks: Iterable[int] = (10, 20, 50)) -> dict[tuple[str, int], float]:
    """Mean Recall@k / NDCG@k of the fused all-rank lists over the users of `mat` that have truth items."""
    return fusion_users(mat, alpha, tau, truth, exclude, ks).means()


def _fused(mat: CandidateMatrix, alpha: float, tau: float, truth: UserItems, exclude: UserItems | None, k: int
           ) -> tuple[torch.Tensor, torch.Tensor, UserItems]:
    n_items = truth.n_items
    ranked = ranked_lists(mat, alpha, tau, k, exclude, pad=n_items)
    # the padding index is one past the last item: a column that no truth set contains
    padded_truth = UserItems(truth.indptr, truth.indices, n_items + 1)
    return torch.from_numpy(ranked), torch.from_numpy(mat.users), padded_truth


def grid_search(mat: CandidateMatrix, truth: UserItems, alphas: Iterable[float], taus: Iterable[float],
                exclude: UserItems | None = None, metric: tuple[str, int] = ("ndcg", 20)
                ) -> tuple[float, float, pl.DataFrame]:
    """(alpha, tau) maximising `metric` on `truth` (validation labels of users the reranker did not train on);
    ties go to the larger alpha (closer to the CF ranking) and then the smaller tau. Returns the table too."""
    rows = []
    for a in alphas:
        for t in taus:
            m = fusion_metrics(mat, a, t, truth, exclude, ks=(metric[1],))
            rows.append({"alpha": float(a), "tau": float(t), "metric": f"{metric[0]}@{metric[1]}",
                         "value": m[metric], "recall": m[("recall", metric[1])]})
    table = pl.DataFrame(rows)
    best = table.sort(["value", "alpha", "tau"], descending=[True, True, False]).row(0, named=True)
    return best["alpha"], best["tau"], table


def user_items(interactions: pl.DataFrame, split: str, n_users: int, n_items: int) -> UserItems:
    """The positives of one split as a UserItems set (truth for `split`, or items to exclude)."""
    pos = interactions.filter((pl.col("split") == split) & (pl.col("sign") > 0))
    return UserItems.from_pairs(torch.from_numpy(pos["user"].to_numpy().astype("int64")),
                                torch.from_numpy(pos["item"].to_numpy().astype("int64")), n_users, n_items)


def metrics_fusion_cannot_move(k: int, ks: Iterable[int]) -> list[tuple[str, int]]:
    """The metrics that no fusion of the first `k` CF items can change: Recall@N for every N >= k (k > 0).

    Eq. 21 permutes C_u, the first k columns of the CF ranking, and leaves every later item where CF put it;
    removing excluded items (validation positives when testing) removes the same items from both lists. So the
    first N items of any fused list, N >= k, are the same *set* as CF's first N, and Recall@N (which counts the
    truth items in that set) equals CF's for every user. NDCG@N still moves (the order inside C_u changes), as
    does Recall@N for N < k. With k = 0 (no reranker scores) nothing is fused and the list is CF's."""
    return [("recall", n) for n in sorted(set(ks)) if k > 0 and n >= k]

"""All-rank top-N evaluation: Recall@N and NDCG@N (docs/design.md decision 12).

Reusable by any stage: `rank_topk` takes any `score_fn(users) -> (len(users), n_items)` tensor (a CF
model, a fused reranker score matrix, ...), masks each user's excluded items and keeps the top K with
batched GEMM + topk; `metrics_from_ranked` scores any ranked top-K list against the held-out truth.
Recall@N = hits@N / |truth| and NDCG@N with IDCG over min(|truth|, N) ideal hits (RecBole's
definitions); the mean is over users with at least one truth item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class UserItems:
    """Each user's item set as CSR: items of user u are indices[indptr[u]:indptr[u+1]] (sorted, unique)."""

    indptr: torch.Tensor
    indices: torch.Tensor
    n_items: int

    @classmethod
    def from_pairs(cls, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> "UserItems":
        key = torch.unique(users.long() * n_items + items.long())
        indptr = torch.zeros(n_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(key // n_items, minlength=n_users), 0)
        return cls(indptr, key % n_items, n_items)

    @property
    def n_users(self) -> int:
        return self.indptr.numel() - 1

    def counts(self, users: torch.Tensor | None = None) -> torch.Tensor:
        c = self.indptr[1:] - self.indptr[:-1]
        return c if users is None else c[users]

    def pairs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in `users`, item) for every item of every user in the batch, without a Python loop."""
        cnt = self.counts(users)
        rows = torch.repeat_interleave(torch.arange(users.numel()), cnt)
        start = torch.repeat_interleave(self.indptr[users], cnt)
        within = torch.arange(rows.numel()) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        return rows, self.indices[start + within]

    def dense(self, users: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(users.numel(), self.n_items, dtype=torch.bool)
        rows, items = self.pairs(users)
        out[rows, items] = True
        return out

    def union(self, other: "UserItems") -> "UserItems":
        u = torch.repeat_interleave(torch.arange(self.n_users), self.counts())
        v = torch.repeat_interleave(torch.arange(other.n_users), other.counts())
        return UserItems.from_pairs(torch.cat([u, v]), torch.cat([self.indices, other.indices]),
                                    max(self.n_users, other.n_users), self.n_items)


def rank_topk(score_fn: ScoreFn, users: torch.Tensor, k: int, exclude: UserItems | None = None,
              batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (items, scores) per user, best first, excluded items never returned (score -inf).

    Each user batch is scored, masked and cut to its top k on the device `score_fn` returns its scores on
    (a CF model on CUDA: the whole all-rank pass stays there); only the top k come back, on the CPU."""
    items_out, scores_out = [], []
    with torch.no_grad():
        for start in range(0, users.numel(), batch_size):
            batch = users[start:start + batch_size]
            scores = score_fn(batch).float().clone()
            if exclude is not None:
                rows, cols = exclude.pairs(batch.cpu())
                scores[rows.to(scores.device), cols.to(scores.device)] = -torch.inf
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            items_out.append(top.indices.cpu())
            scores_out.append(top.values.cpu())
    return torch.cat(items_out), torch.cat(scores_out)


def user_metrics_from_ranked(ranked: torch.Tensor, users: torch.Tensor, truth: UserItems,
                             ks: Iterable[int] = (10, 20, 50)) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """Per-user Recall@k and NDCG@k of ranked lists `ranked[r]` (items, best first) for `users[r]`: the users
    that have truth items, and (metric, k) -> one value per such user (the paired tests of lagcl/stats.py)."""
    ks = sorted(ks)
    n_truth = truth.counts(users)
    keep = n_truth > 0
    ranked, users, n_truth = ranked[keep], users[keep], n_truth[keep].double()
    if users.numel() == 0:
        return users, {(m, k): torch.zeros(0, dtype=torch.float64) for m in ("recall", "ndcg") for k in ks}
    hits = truth.dense(users).gather(1, ranked).double()
    discount = 1.0 / torch.log2(torch.arange(ranked.shape[1], dtype=torch.float64) + 2.0)
    out = {}
    for k in ks:
        h = hits[:, :k]
        out[("recall", k)] = h.sum(1) / n_truth
        ideal = torch.cumsum(discount, 0)[(torch.clamp(n_truth, max=min(k, ranked.shape[1])) - 1).long()]
        out[("ndcg", k)] = (h * discount[:k]).sum(1) / ideal
    return users, out


def metrics_from_ranked(ranked: torch.Tensor, users: torch.Tensor, truth: UserItems,
                        ks: Iterable[int] = (10, 20, 50)) -> dict[tuple[str, int], float]:
    """Mean Recall@k and NDCG@k of ranked lists `ranked[r]` (items, best first) for `users[r]`."""
    _, per_user = user_metrics_from_ranked(ranked, users, truth, ks)
    return {key: float(v.mean()) if v.numel() else 0.0 for key, v in per_user.items()}


def users_with_truth(truth: UserItems, users: torch.Tensor | None = None) -> torch.Tensor:
    """The users that have truth items (of `users`, when given): whom a mean metric is taken over."""
    has_truth = truth.counts() > 0
    if users is not None:
        keep = torch.zeros_like(has_truth)
        keep[users.long()] = True
        has_truth &= keep
    return torch.nonzero(has_truth).flatten()


def evaluate(score_fn: ScoreFn, truth: UserItems, exclude: UserItems | None, ks: Iterable[int] = (10, 20, 50),
             batch_size: int = 1024, users: torch.Tensor | None = None) -> dict[tuple[str, int], float]:
    """All-rank Recall@k / NDCG@k over the users that have truth items (of `users`, when given)."""
    ks = list(ks)
    users = users_with_truth(truth, users)
    if users.numel() == 0:  # an empty segment
        return {(m, k): 0.0 for m in ("recall", "ndcg") for k in ks}
    ranked, _ = rank_topk(score_fn, users, max(ks), exclude, batch_size)
    return metrics_from_ranked(ranked, users, truth, ks)

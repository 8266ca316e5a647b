"""Negative sampling for BPR / LABPR (docs/design.md decision 7), vectorised over a batch.

With probability `dislike_prob` (and when the user has any) the negative is one of the user's known
dislikes (ratings <= threshold and LLM-augmented negatives); otherwise it is uniform over the items
that are not the user's positives (training positives and augmented positives). With `hard_share` and
item groups, that share of the uniform draws is instead drawn from the positive item's own group: a
hard negative of eq. 7. Uniform draws alone make hard triplets as rare as a random pair sharing a group,
which leaves LABPR's w_h almost without effect (BENCHMARKS.md "Rank-level settings").
"""

from __future__ import annotations

import torch


def _csr(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique (user, item) keys -> (indptr, item indices) grouped by user."""
    key = torch.unique(users.long() * n_items + items.long())
    indptr = torch.zeros(n_users + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(key // n_items, minlength=n_users), 0)
    return indptr, key % n_items


class NegativeSampler:
    def __init__(self, n_users: int, n_items: int, pos_users: torch.Tensor, pos_items: torch.Tensor,
                 dislike_users: torch.Tensor | None = None, dislike_items: torch.Tensor | None = None,
                 dislike_prob: float = 0.0, item_group: torch.Tensor | None = None, hard_share: float = 0.0):
        self.n_users, self.n_items, self.dislike_prob = n_users, n_items, dislike_prob
        self.hard_share = hard_share if item_group is not None else 0.0
        self.item_group = item_group
        if item_group is not None:
            # items sorted by group: group g's members are group_items[group_ptr[g]:group_ptr[g + 1]]
            self.group_items = torch.argsort(item_group, stable=True)
            counts = torch.bincount(item_group, minlength=int(item_group.max()) + 1)
            self.group_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        self.pos_keys = torch.unique(pos_users.long() * n_items + pos_items.long())
        if dislike_users is None or dislike_users.numel() == 0:
            dislike_users = dislike_items = torch.zeros(0, dtype=torch.long)
        d_keys = dislike_users.long() * n_items + dislike_items.long()
        # a dislike that is also a positive (e.g. an augmented negative on a graph edge) is no negative
        d_keys = d_keys[~torch.isin(d_keys, self.pos_keys)]
        self.d_indptr, self.d_items = _csr(d_keys // n_items, d_keys % n_items, n_users, n_items)
        self.d_count = self.d_indptr[1:] - self.d_indptr[:-1]
        full = torch.bincount(self.pos_keys // n_items, minlength=n_users) >= n_items
        if bool(full.any()):
            raise ValueError(f"users {torch.nonzero(full).flatten()[:5].tolist()} are positive on every item: "
                             "no negative can be sampled for them")

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.pos_keys.numel() == 0:
            return torch.zeros(users.shape, dtype=torch.bool)
        key = users.long() * self.n_items + items.long()
        at = torch.searchsorted(self.pos_keys, key).clamp(max=self.pos_keys.numel() - 1)
        return self.pos_keys[at] == key

    def sample_users(self, items: torch.Tensor, generator: torch.Generator, max_rounds: int = 50) -> torch.Tensor:
        """One negative user per entry of `items` (the item -> user half of LABPR): uniform over the users
        that do not have that item as a positive (after `max_rounds` rejections a draw is kept as is)."""
        items = items.long()
        neg = torch.randint(self.n_users, (items.numel(),), generator=generator)
        bad = self.is_positive(neg, items)
        for _ in range(max_rounds):
            if not bool(bad.any()):
                break
            idx = torch.nonzero(bad).flatten()
            neg[idx] = torch.randint(self.n_users, (idx.numel(),), generator=generator)
            bad[idx] = self.is_positive(neg[idx], items[idx])
        return neg

    def _uniform(self, users: torch.Tensor, generator: torch.Generator, reject=None) -> torch.Tensor:
        """One uniform non-positive item per user; `reject(idx, items)` also refuses a draw (then after
        `EASY_ROUNDS` rounds a row keeps a plain non-positive)."""
        neg = torch.randint(self.n_items, (users.numel(),), generator=generator)
        idx = torch.arange(users.numel())
        for rounds in range(self.EASY_ROUNDS + 1):
            bad = self.is_positive(users[idx], neg[idx])
            if reject is not None and rounds < self.EASY_ROUNDS:
                bad |= reject(idx, neg[idx])
            idx = idx[bad]
            if idx.numel() == 0:
                return neg
            neg[idx] = torch.randint(self.n_items, (idx.numel(),), generator=generator)
        while idx.numel():  # the last rounds: any non-positive
            bad = self.is_positive(users[idx], neg[idx])
            idx = idx[bad]
            neg[idx] = torch.randint(self.n_items, (idx.numel(),), generator=generator)
        return neg

    EASY_ROUNDS = 100

    def sample_easy_hard(self, users: torch.Tensor, pos_items: torch.Tensor, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The authors' sampler (`rank.reading: official`, docs/design.md 15): per (user, positive) one easy
        negative, uniform over the user's non-positives outside the positive's item group, and one hard one
        from the positive's own group: a draw, redrawn up to 10 times while it is a positive of the user,
        then a uniform non-positive; a group of one (the positive alone) gives a uniform non-positive at once.
        Returns (easy, hard, from_group): from_group marks the hard negatives that did come from the group."""
        if self.item_group is None:
            raise ValueError("the official reading's sampler needs item groups")
        users, pos_items = users.long(), pos_items.long()
        g = self.item_group[pos_items]
        size = self.group_ptr[g + 1] - self.group_ptr[g]
        # a group holding every item leaves no easy negative: such a row takes a plain non-positive at once
        # (the authors' loop would never end there)
        outside = size < self.n_items
        easy = self._uniform(users, generator,
                             lambda idx, items: (self.item_group[items] == g[idx]) & outside[idx])
        hard = torch.zeros_like(users)
        todo = size > 1
        for _ in range(11):  # one draw and 10 redraws
            idx = torch.nonzero(todo).flatten()
            if idx.numel() == 0:
                break
            offset = (torch.rand(idx.numel(), generator=generator) * size[idx]).long().clamp(max=size[idx] - 1)
            hard[idx] = self.group_items[self.group_ptr[g[idx]] + offset]
            todo[idx] = self.is_positive(users[idx], hard[idx])
        from_group = (size > 1) & ~todo
        rest = torch.nonzero(~from_group).flatten()
        if rest.numel():
            hard[rest] = self._uniform(users[rest], generator)
        return easy, hard, from_group

    def sample(self, users: torch.Tensor, generator: torch.Generator,
               pos_items: torch.Tensor | None = None) -> torch.Tensor:
        """One negative item per entry of `users`; never one of that user's positives. `pos_items` (the
        triplets' positives) is needed for the hard share: a negative from the positive's item group."""
        users = users.long()
        n = users.numel()
        neg = torch.randint(self.n_items, (n,), generator=generator)
        bad = self.is_positive(users, neg)
        # rejection sampling touches only the rejected entries; with sparse positives it ends in a few rounds
        while bool(bad.any()):
            idx = torch.nonzero(bad).flatten()
            neg[idx] = torch.randint(self.n_items, (idx.numel(),), generator=generator)
            bad[idx] = self.is_positive(users[idx], neg[idx])
        if self.hard_share > 0 and pos_items is not None:
            g = self.item_group[pos_items.long()]
            size = self.group_ptr[g + 1] - self.group_ptr[g]
            take = torch.rand(n, generator=generator) < self.hard_share
            hard = neg.clone()
            todo = take.clone()
            # a same-group item the user already likes is no negative: draw again (a few rounds; a row still
            # without one, e.g. a group made only of the user's positives, keeps its uniform draw)
            for _ in range(10):
                idx = torch.nonzero(todo).flatten()
                if idx.numel() == 0:
                    break
                offset = (torch.rand(idx.numel(), generator=generator) * size[idx]).long()
                hard[idx] = self.group_items[self.group_ptr[g[idx]] + offset.clamp(max=(size[idx] - 1).clamp(min=0))]
                todo[idx] = self.is_positive(users[idx], hard[idx])
            neg = torch.where(take & ~todo, hard, neg)
        if self.dislike_prob > 0 and self.d_items.numel() > 0:
            cnt = self.d_count[users]
            take = (torch.rand(n, generator=generator) < self.dislike_prob) & (cnt > 0)
            offset = (torch.rand(n, generator=generator) * cnt).long().clamp(max=(cnt - 1).clamp(min=0))
            picked = self.d_items[(self.d_indptr[users] + offset).clamp(max=self.d_items.numel() - 1)]
            neg = torch.where(take, picked, neg)
        return neg


"""The training data of one variant: what the trainer reads (`TrainData`), assembled from the prepare stage's
interactions with the data level's augmented interactions (eq. 2-4) and the rank level's groups (eq. 5-6):
the graph edges, the BPR positives with their weights, the dislikes the sampler draws (eq. 9), and the
evaluation sets; `category_groups` gives the stand-in genre groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import torch

from lagcl.evaluate import UserItems
from lagcl.sampling import NegativeSampler


@dataclass
class TrainData:
    n_users: int
    n_items: int
    edge_users: torch.Tensor      # graph edges: training positives (+ augmented positives on the graph channel)
    edge_items: torch.Tensor
    train_pos: UserItems          # real training positives: masked when ranking
    valid: UserItems
    test: UserItems
    sampler: NegativeSampler
    user_group: torch.Tensor | None = None
    item_group: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    edge_weight: torch.Tensor | None = None   # per graph edge (None: all 1)
    pair_users: torch.Tensor | None = None    # BPR positives (None: the graph edges)
    pair_items: torch.Tensor | None = None
    pair_weight: torch.Tensor | None = None   # per BPR positive (None: all 1)
    train_neg: UserItems | None = None        # real training dislikes (ratings <= threshold): the masked protocol

    def __post_init__(self) -> None:
        if self.pair_users is None:
            self.pair_users, self.pair_items = self.edge_users, self.edge_items


def _t(df: pl.DataFrame, col: str) -> torch.Tensor:
    return torch.from_numpy(df[col].cast(pl.Int64).to_numpy().copy())


def category_groups(interactions: pl.DataFrame, items: pl.DataFrame, n_users: int, n_items: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in semantic groups until the `groups` stage exists: an item's group is its first category
    (genre); a user's group is the most frequent first-genre among the user's training positives
    (ties -> the smaller group id; a user with none gets a group of its own kind, id = n_genres)."""
    first = items.select("item", pl.col("categories").list.first().fill_null("(none)").alias("g"))
    names = sorted(first["g"].unique().to_list())
    gid = {n: k for k, n in enumerate(names)}
    item_group = torch.full((n_items,), len(names), dtype=torch.long)
    item_group[_t(first, "item")] = torch.tensor([gid[g] for g in first["g"].to_list()], dtype=torch.long)
    pos = interactions.filter((pl.col("split") == "train") & (pl.col("sign") > 0))
    counts = torch.zeros(n_users, len(names) + 1)
    counts.index_put_((_t(pos, "user"), item_group[_t(pos, "item")]), torch.ones(pos.height), accumulate=True)
    counts[:, -1] = 0.5  # only wins for users without training positives
    return counts.argmax(1), item_group


def _with_augmented(real: torch.Tensor, aug: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sorted unique keys of real + augmented pairs and their weights (1 real, `weight` augmented-only)."""
    keys = torch.unique(torch.cat([real, aug]))
    if aug.numel() == 0 or weight == 1.0:
        return keys, None
    w = torch.where(torch.isin(keys, real), 1.0, float(weight))
    return keys, w


def build_train_data(interactions: pl.DataFrame, n_users: int, n_items: int,
                     augmented: pl.DataFrame | None = None, user_group: torch.Tensor | None = None,
                     item_group: torch.Tensor | None = None, dislike_prob: float = 0.0, aug_weight: float = 1.0,
                     channel: str = "both", hard_share: float = 0.0) -> TrainData:
    """Graph = training positives (+ augmented positives on the `graph` channel, edges of weight
    `aug_weight`); BPR positives = training positives (+ augmented ones on the `bpr` channel, triplets of
    weight `aug_weight`); dislikes = training negatives + augmented negatives (never graph edges, never
    evaluation targets). `aug_weight` 0 or no `augmented` gives exactly the data of a run without the data
    level (the control). Augmented positives are never drawn as negatives while the level is on."""
    def pairs(df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        return _t(df, "user"), _t(df, "item")

    if channel not in ("graph", "bpr", "both"):
        raise ValueError(f"unknown augmentation channel {channel!r}: graph, bpr or both")
    train = interactions.filter(pl.col("split") == "train")
    pos = train.filter(pl.col("sign") > 0)
    neg = train.filter(pl.col("sign") < 0)
    aug_pos = aug_neg = pos.head(0)
    if augmented is not None and augmented.height and aug_weight > 0:
        aug_pos = augmented.filter(pl.col("sign") > 0)
        aug_neg = augmented.filter(pl.col("sign") < 0)
    real = torch.unique(_t(pos, "user") * n_items + _t(pos, "item"))
    aug = torch.unique(_t(aug_pos, "user") * n_items + _t(aug_pos, "item"))
    none = aug[:0]
    g_key, g_w = _with_augmented(real, aug if channel in ("graph", "both") else none, aug_weight)
    p_key, p_w = _with_augmented(real, aug if channel in ("bpr", "both") else none, aug_weight)
    all_pos = torch.unique(torch.cat([real, aug]))
    du = torch.cat([_t(neg, "user"), _t(aug_neg, "user")])
    di = torch.cat([_t(neg, "item"), _t(aug_neg, "item")])
    split = {s: interactions.filter((pl.col("split") == s) & (pl.col("sign") > 0)) for s in ("valid", "test")}
    return TrainData(
        n_users, n_items, g_key // n_items, g_key % n_items,
        train_pos=UserItems.from_pairs(*pairs(pos), n_users, n_items),
        valid=UserItems.from_pairs(*pairs(split["valid"]), n_users, n_items),
        test=UserItems.from_pairs(*pairs(split["test"]), n_users, n_items),
        sampler=NegativeSampler(n_users, n_items, all_pos // n_items, all_pos % n_items, du, di, dislike_prob,
                                item_group=item_group, hard_share=hard_share),
        user_group=user_group, item_group=item_group,
        info={"graph_edges": int(g_key.numel()), "bpr_positives": int(p_key.numel()),
              "train_positives": pos.height, "augmented_positives": int(aug.numel()),
              "augmented_weight": float(aug_weight) if aug.numel() else 0.0, "channel": channel,
              "dislikes": int(du.numel()), "augmented_negatives": aug_neg.height},
        edge_weight=g_w, pair_users=p_key // n_items, pair_items=p_key % n_items, pair_weight=p_w,
        train_neg=UserItems.from_pairs(*pairs(neg), n_users, n_items),
    )

"""Fitting one variant of the chain (lagcl/chain/rule.py): the backbone with the data level (eq. 2-4) and/or the
rank level (eq. 7-12) on, trained (lagcl/train.py) on its data (lagcl/train_data.py) and measured
(lagcl/measure.py); its headline numbers and its top-k table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from lagcl.config import DataLevelConfig, GCLConfig, RankConfig
from lagcl.measure import metric_rows, per_user_table
from lagcl.meta import metric_key
from lagcl.models import Backbone, Graph, build_model
from lagcl.train import TrainResult, train
from lagcl.train_data import TrainData, build_train_data


@dataclass(eq=False)
class Variant:
    """One model to train: the backbone with the data level at `aug_weight` (0 = off) and/or the rank level."""

    name: str
    augmented: pl.DataFrame | None = None
    aug_weight: float = 0.0
    rank: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.name.lower()).strip("-")

    @property
    def data_on(self) -> bool:
        return self.augmented is not None and self.aug_weight > 0


@dataclass(eq=False)
class Fitted:
    """A trained variant: its metric rows (split, protocol, segment, metric, k, value) and, when trained
    in this process, the model and its training record."""

    variant: Variant
    rows: list[dict]
    model: Backbone | None = None
    data: TrainData | None = None
    result: TrainResult | None = None
    per_user: pl.DataFrame | None = None  # (split, user, recall, ndcg) at 20: what the paired tests compare

    def value(self, split: str = "valid", metric: str = "recall", k: int = 20, segment: str = "all",
              protocol: str = "all") -> float:
        for r in self.rows:
            if (r["split"], r["metric"], r["k"], r["segment"], r["protocol"]) == (split, metric, k, segment, protocol):
                return float(r["value"])
        raise KeyError(f"{self.variant.name}: no {split} {metric}@{k} for segment {segment}, protocol {protocol}")

    @property
    def valid(self) -> float:
        return self.value("valid")


def headline(f: Fitted) -> dict[str, float]:
    out = {}
    for s in ("valid", "test"):
        for m in ("recall", "ndcg"):
            for seg in ("all", "cold", "warm"):
                try:
                    out[metric_key(s, m, segment=None if seg == "all" else seg)] = f.value(s, m, 20, seg)
                except KeyError:
                    pass
    return out


@dataclass
class FitContext:
    """What every variant of one gcl stage shares: data, configuration, groups, evaluation segments."""

    interactions: pl.DataFrame
    n_users: int
    n_items: int
    gcl: GCLConfig
    rank: RankConfig
    data_level: DataLevelConfig
    graph_backend: str
    seed: int
    segments: dict[str, torch.Tensor | None]
    ks: list[int]
    user_group: torch.Tensor | None = None
    item_group: torch.Tensor | None = None
    ckpt_root: Path | None = None
    progress: bool = True


def fit_variant(ctx: FitContext, v: Variant) -> Fitted:
    """Train one variant (resumable: its checkpoints live under ckpt_root/<slug>) and measure it."""
    rank = ctx.rank if v.rank else None
    dislike = max(ctx.rank.dislike_sample_prob if v.rank else 0.0, ctx.data_level.dislike_prob if v.data_on else 0.0)
    data = build_train_data(ctx.interactions, ctx.n_users, ctx.n_items, v.augmented if v.data_on else None,
                            ctx.user_group, ctx.item_group, dislike_prob=dislike,
                            aug_weight=v.aug_weight if v.data_on else 0.0, channel=ctx.data_level.channel,
                            hard_share=ctx.rank.hard_neg_share if v.rank else 0.0)
    graph = Graph(data.edge_users, data.edge_items, ctx.n_users, ctx.n_items, ctx.graph_backend,
                  weights=data.edge_weight)
    model = build_model(ctx.gcl, graph, ctx.seed)
    ckpt = ctx.ckpt_root / v.slug if ctx.ckpt_root is not None else None
    result = train(model, data, ctx.gcl, rank, ctx.seed, ckpt_dir=ckpt, progress=ctx.progress)
    rows = metric_rows(model, data, ctx.ks, ctx.segments, ctx.gcl.eval_batch_users)
    return Fitted(v, rows, model, data, result, per_user_table(model, data, 20, ctx.gcl.eval_batch_users))


def topk_table(f: Fitted, k: int, batch_size: int = 1024) -> pl.DataFrame:
    """(user, item, score, rank): each user's top k items by the trained model, training positives masked."""
    from lagcl.evaluate import rank_topk

    model, data = f.model, f.data
    model.eval()
    with torch.no_grad():
        cache = model.embeddings()
    users = torch.arange(data.n_users)
    top_items, top_scores = rank_topk(lambda u: model.score(u, cache), users, k, data.train_pos, batch_size)
    k = top_items.shape[1]
    return pl.DataFrame({
        "user": users.repeat_interleave(k).numpy().astype("int32"),
        "item": top_items.flatten().numpy().astype("int32"),
        "score": top_scores.flatten().double().numpy(),
        "rank": torch.arange(1, k + 1, dtype=torch.int32).repeat(data.n_users).numpy(),
    })

"""A trained backbone measured on its TrainData (all-rank, lagcl/evaluate.py): what each split masks
(`split_sets`), the two test protocols (`PROTOCOLS`), the metric rows of every split, protocol and segment, and
the per-user values the paired tests compare (lagcl/stats.py). The trainer validates each epoch with `validate`.
"""

from __future__ import annotations

import polars as pl
import torch

from lagcl.evaluate import UserItems, evaluate, rank_topk, user_metrics_from_ranked, users_with_truth
from lagcl.models import Backbone
from lagcl.train_data import TrainData


def validate(model: Backbone, data: TrainData, ks=(20,), split: str = "valid", batch_size: int = 1024,
             users: torch.Tensor | None = None, mask_dislikes: bool = False) -> dict[tuple[str, int], float]:
    """Validation masks training positives; test masks training and validation positives. `users`: only
    these users (a segment, e.g. cold-start); `mask_dislikes`: also mask the known training dislikes (the
    second protocol: a known dislike is not recommended again)."""
    model.eval()
    with torch.no_grad():
        cache = model.embeddings()
    truth, exclude = split_sets(data, split, mask_dislikes)
    out = evaluate(lambda u: model.score(u, cache), truth, exclude, ks, batch_size, users=users)
    model.train()
    return out


def split_sets(data: TrainData, split: str, mask_dislikes: bool = False) -> tuple[UserItems, UserItems]:
    """(truth, excluded items) of a split: validation masks training positives, test masks training and
    validation positives; `mask_dislikes` also masks the known training dislikes."""
    exclude = data.train_pos if split == "valid" else data.train_pos.union(data.valid)
    if mask_dislikes and data.train_neg is not None:
        exclude = exclude.union(data.train_neg)
    return (data.valid if split == "valid" else data.test), exclude


def per_user_table(model: Backbone, data: TrainData, k: int = 20, batch_size: int = 1024) -> pl.DataFrame:
    """(split, user, recall, ndcg) at k for every user with truth items, both splits, all-items protocol: the
    per-user values the paired tests compare (lagcl/stats.py); their means are the `metrics` rows."""
    model.eval()
    with torch.no_grad():
        cache = model.embeddings()
    frames = []
    for split in ("valid", "test"):
        truth, exclude = split_sets(data, split)
        users = users_with_truth(truth)
        ranked, _ = rank_topk(lambda u: model.score(u, cache), users, k, exclude, batch_size)
        users, per = user_metrics_from_ranked(ranked, users, truth, (k,))
        frames.append(pl.DataFrame({"split": split, "user": users.numpy().astype("int32"),
                                    "recall": per[("recall", k)].numpy(), "ndcg": per[("ndcg", k)].numpy()}))
    model.train()
    return pl.concat(frames)


PROTOCOLS = {"all": False, "dislikes masked": True}


def metric_rows(model: Backbone, data: TrainData, ks, segments: dict[str, torch.Tensor], batch_size: int = 1024
                ) -> list[dict]:
    """Every (split, protocol, segment, metric, k) of a trained model, as rows for a `metrics` table."""
    rows = []
    for split in ("valid", "test"):
        for protocol, mask in PROTOCOLS.items():
            for segment, users in segments.items():
                m = validate(model, data, ks, split, batch_size, users=users, mask_dislikes=mask)
                rows += [{"split": split, "protocol": protocol, "segment": segment, "metric": metric, "k": k,
                          "value": v} for (metric, k), v in m.items()]
    return rows

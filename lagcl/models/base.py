"""The interface every backbone implements.

`encode(generator)` is one training-time pass: the embeddings the recommendation loss scores with,
and (for contrastive backbones) the two views whose same-node pairs are InfoNCE positives.
`embeddings()` is the deterministic inference pass; `score(users)` ranks all items for a user batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lagcl.models.graph import Graph


@dataclass
class Encoded:
    user: torch.Tensor  # (n_users, d): scored by BPR / LABPR
    item: torch.Tensor  # (n_items, d)
    views: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    # ((user view 1, item view 1), (user view 2, item view 2)) for InfoNCE, None for MF / LightGCN


class Backbone(nn.Module):
    contrastive = False
    reference_cl: str | None = None  # a backbone whose reference code has its own contrastive loss form

    def __init__(self, graph: Graph, emb_dim: int):
        super().__init__()
        self.graph = graph
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, emb_dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, emb_dim)))

    @property
    def ego(self) -> torch.Tensor:
        return torch.cat([self.user_emb, self.item_emb])

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[: self.n_users], x[self.n_users:]

    def new_epoch(self, generator: torch.Generator) -> None:
        """Per-epoch randomness (SGL redraws its dropped graphs here)."""

    def encode(self, generator: torch.Generator) -> Encoded:
        raise NotImplementedError

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, users: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        u, i = cache if cache is not None else self.embeddings()
        return u[users] @ i.T

"""LightGCN (He et al., 2020): E = mean(E^0 ... E^L) over the normalised bipartite graph."""

from __future__ import annotations

import torch

from lagcl.models.base import Backbone, Encoded
from lagcl.models.graph import Graph, light_layers


class LightGCN(Backbone):
    def __init__(self, graph: Graph, emb_dim: int, n_layers: int):
        super().__init__(graph, emb_dim)
        self.n_layers = n_layers

    def propagate(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(torch.stack(light_layers(graph, self.ego, self.n_layers)).mean(0))

    def encode(self, generator: torch.Generator) -> Encoded:
        return Encoded(*self.propagate(self.graph))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.graph)

"""SGL-ED (Wu et al., 2021): LightGCN plus two edge-dropped views, redrawn every epoch, contrasted node-wise."""

from __future__ import annotations

import torch

from lagcl.models.base import Encoded
from lagcl.models.graph import Graph
from lagcl.models.lightgcn import LightGCN


class SGL(LightGCN):
    contrastive = True

    def __init__(self, graph: Graph, emb_dim: int, n_layers: int, drop_rate: float):
        super().__init__(graph, emb_dim, n_layers)
        self.drop_rate = drop_rate
        self.view_graphs: tuple[Graph, Graph] | None = None

    def new_epoch(self, generator: torch.Generator) -> None:
        self.view_graphs = (self.graph.edge_dropout(self.drop_rate, generator),
                            self.graph.edge_dropout(self.drop_rate, generator))

    def encode(self, generator: torch.Generator) -> Encoded:
        if self.view_graphs is None:
            self.new_epoch(generator)
        g1, g2 = self.view_graphs
        return Encoded(*self.propagate(self.graph), views=(self.propagate(g1), self.propagate(g2)))

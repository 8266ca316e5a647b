"""LightGCL (Cai et al., 2023): a GCN view (edge-dropped propagation, layers summed) contrasted with an
SVD view that propagates through the rank-q reconstruction U S V^T of R_hat (torch.svd_lowrank)."""

from __future__ import annotations

import torch

from lagcl.models.base import Backbone, Encoded
from lagcl.models.graph import Graph


class LightGCL(Backbone):
    contrastive = True
    reference_cl = "lightgcl"  # losses.lightgcl_info_nce (gcl.cl_loss: reference)

    def __init__(self, graph: Graph, emb_dim: int, n_layers: int, q: int, drop_rate: float, seed: int = 0):
        super().__init__(graph, emb_dim)
        self.n_layers, self.drop_rate = n_layers, drop_rate
        # svd_lowrank draws a random projection from the global RNG: fork it so the SVD is seeded and
        # model construction does not shift the RNG stream seen by anything built afterwards
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(graph.r_hat, q=q, niter=4)
        self.register_buffer("us", u * s, persistent=False)   # (n_users, q)
        self.register_buffer("vs", v * s, persistent=False)   # (n_items, q)
        self.register_buffer("u_t", u.T.contiguous(), persistent=False)
        self.register_buffer("v_t", v.T.contiguous(), persistent=False)

    def _gcn(self, graph: Graph) -> list[torch.Tensor]:
        out, x = [self.ego], self.ego
        for _ in range(self.n_layers):
            x = graph.propagate(x)
            out.append(x)
        return out

    def _svd_view(self, gcn_layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # G_u^l = U S V^T E_i^(l-1), G_i^l = V S U^T E_u^(l-1): low-rank global propagation
        gu, gi = [self.user_emb], [self.item_emb]
        for prev in gcn_layers[:-1]:
            eu, ei = self.split(prev)
            gu.append(self.us @ (self.v_t @ ei))
            gi.append(self.vs @ (self.u_t @ eu))
        return torch.stack(gu).sum(0), torch.stack(gi).sum(0)

    def encode(self, generator: torch.Generator) -> Encoded:
        graph = self.graph.edge_dropout(self.drop_rate, generator) if self.drop_rate > 0 else self.graph
        layers = self._gcn(graph)
        gcn = self.split(torch.stack(layers).sum(0))
        return Encoded(*gcn, views=(gcn, self._svd_view(layers)))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(torch.stack(self._gcn(self.graph)).sum(0))

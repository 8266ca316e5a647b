"""XSimGCL (Yu et al., 2023): LightGCN with uniform noise of magnitude eps added after every hop; the
final (mean of layers 1..L) view is contrasted with the perturbed layer-l* view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lagcl.models.base import Backbone, Encoded
from lagcl.models.graph import Graph, light_layers


class XSimGCL(Backbone):
    contrastive = True

    def __init__(self, graph: Graph, emb_dim: int, n_layers: int, eps: float, l_star: int):
        super().__init__(graph, emb_dim)
        if not 1 <= l_star <= n_layers:
            raise ValueError(f"XSimGCL contrast layer l*={l_star} must be in 1..{n_layers}")
        self.n_layers, self.eps, self.l_star = n_layers, eps, l_star

    def _layers(self, generator: torch.Generator | None) -> list[torch.Tensor]:
        def noise(x: torch.Tensor) -> torch.Tensor:
            # sign-aligned noise keeps each embedding in its hyper-octant (XSimGCL eq. 7)
            # drawn on the CPU with the trainer's generator (the same noise on every device)
            r = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            return x + torch.sign(x) * F.normalize(r, dim=-1) * self.eps
        return light_layers(self.graph, self.ego, self.n_layers, noise if generator is not None else None)

    def encode(self, generator: torch.Generator) -> Encoded:
        layers = self._layers(generator)
        final = self.split(torch.stack(layers[1:]).mean(0))
        return Encoded(*final, views=(final, self.split(layers[self.l_star])))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(torch.stack(self._layers(None)[1:]).mean(0))

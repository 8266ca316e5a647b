"""MF with BPR (Rendle et al., 2009): the ego embeddings are the representations."""

from __future__ import annotations

import torch

from lagcl.models.base import Backbone, Encoded


class MF(Backbone):
    def encode(self, generator: torch.Generator) -> Encoded:
        return Encoded(self.user_emb, self.item_emb)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

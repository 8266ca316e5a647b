"""Backbones (one file each) behind one interface (`base.Backbone`) and one propagation module (`graph`)."""

from __future__ import annotations

import torch

from lagcl.config import GCLConfig
from lagcl.models.base import Backbone, Encoded
from lagcl.models.graph import Graph
from lagcl.models.lightgcl import LightGCL
from lagcl.models.lightgcn import LightGCN
from lagcl.models.mf import MF
from lagcl.models.sgl import SGL
from lagcl.models.xsimgcl import XSimGCL

__all__ = ["Backbone", "Encoded", "Graph", "build_model", "MF", "LightGCN", "SGL", "LightGCL", "XSimGCL"]


def build_model(cfg: GCLConfig, graph: Graph, seed: int) -> Backbone:
    """The configured backbone, initialised from `seed` without touching the global RNG stream."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        name = cfg.backbone
        if name == "mf":
            return MF(graph, cfg.emb_dim)
        if name == "lightgcn":
            return LightGCN(graph, cfg.emb_dim, cfg.n_layers)
        if name == "sgl":
            return SGL(graph, cfg.emb_dim, cfg.n_layers, cfg.drop_rate)
        if name == "lightgcl":
            return LightGCL(graph, cfg.emb_dim, cfg.n_layers, cfg.svd_q, cfg.drop_rate, seed)
        if name == "xsimgcl":
            return XSimGCL(graph, cfg.emb_dim, cfg.n_layers, cfg.eps, cfg.l_star)
    raise ValueError(f"unknown backbone {name!r}")

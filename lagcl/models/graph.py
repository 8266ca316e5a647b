"""Graph propagation over the symmetric-normalised user-item bipartite adjacency.

All backbones propagate through this module only, so the backend (`graph.backend`) changes nothing in
the models. Nodes are users 0..n_users-1 followed by items. `torch` (this file: CSR SpMM) is the default;
`dgl` (graph_dgl.py: DGL message passing, numerically equal) is imported only when asked for, because
PyPI's DGL runs only in its own environment (docs/design.md "Graph propagation", `make setup-dgl`).
"""

from __future__ import annotations

import importlib
import sys
import warnings

import torch

from lagcl.errors import ConfigError

BACKENDS = ("torch", "dgl")


def normalized_interactions(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """R_hat = D_u^-1/2 R D_i^-1/2 as a sparse COO (n_users x n_items); duplicate edges count once.

    `weights` (one per edge, default 1) make R weighted and the degrees weighted sums: an LLM-augmented
    edge of weight w < 1 is evidence of lower confidence than an observed one (docs/design.md 13). A duplicate
    edge keeps its largest weight, so an observed edge is never weakened by an augmented copy of it."""
    key, inverse = torch.unique(users.long() * n_items + items.long(), return_inverse=True)
    u, i = key // n_items, key % n_items
    if weights is None:
        w = torch.ones(key.numel(), dtype=torch.float64)
    else:
        w = torch.zeros(key.numel(), dtype=torch.float64).scatter_reduce(
            0, inverse, weights.double(), reduce="amax", include_self=False)
    du = torch.zeros(n_users, dtype=torch.float64).index_add_(0, u, w)
    di = torch.zeros(n_items, dtype=torch.float64).index_add_(0, i, w)
    val = (w * du[u].rsqrt() * di[i].rsqrt()).float()
    return torch.sparse_coo_tensor(torch.stack([u, i]), val, (n_users, n_items), is_coalesced=True,
                                   check_invariants=False)


class _SymmetricSpMM(torch.autograd.Function):
    """A @ x whose backward reuses A (A is symmetric): torch's own CSR backward rebuilds A^T as CSR
    (a sort) on every call, which dominated a LightGCN step on ML-100K."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


class Graph:
    """A = [[0, R_hat], [R_hat^T, 0]] stored once as CSR; `propagate(x)` is A @ x.

    `Graph(..., backend="dgl")` builds a `graph_dgl.DGLGraph` (a subclass with the same interface:
    propagate, edge_dropout, r_hat, n_edges, users/items), so every call site stays backend-agnostic."""

    def __new__(cls, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                backend: str = "torch", weights: torch.Tensor | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown graph.backend={backend!r}; choose one of {', '.join(BACKENDS)}")
        if cls is Graph and backend in SUBCLASSES:
            cls = _backend_class(backend)
        return super().__new__(cls)

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                 backend: str = "torch", weights: torch.Tensor | None = None):
        self.n_users, self.n_items, self.backend = n_users, n_items, backend
        self.users, self.items = users.long(), items.long()
        self.r_hat = normalized_interactions(self.users, self.items, n_users, n_items, weights)
        self.weights: torch.Tensor | None = None
        if weights is not None:  # per deduplicated edge, in r_hat's order (kept through edge dropout)
            key, inverse = torch.unique(self.users * n_items + self.items, return_inverse=True)
            self.weights = torch.zeros(key.numel(), dtype=torch.float64).scatter_reduce(
                0, inverse, weights.double(), reduce="amax", include_self=False)
        idx, val = self.r_hat.indices(), self.r_hat.values()
        rows = torch.cat([idx[0], idx[1] + n_users])
        cols = torch.cat([idx[1] + n_users, idx[0]])
        n = n_users + n_items
        with warnings.catch_warnings():
            # CSR SpMM is this module's documented choice; torch's "beta" notice on each graph is noise
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            self.adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.cat([val, val]), (n, n),
                                               check_invariants=False).coalesce().to_sparse_csr()

    @property
    def device(self) -> torch.device:
        return self.r_hat.device

    def to(self, device: str | torch.device) -> "Graph":
        """This graph with its adjacency, R_hat, edges and weights on `device` (itself when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        if self.backend != "torch":
            raise ConfigError(f"graph.backend={self.backend} runs on the CPU here: set gcl.device=cpu or use "
                              "graph.backend=torch")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.users, other.items = self.users.to(device), self.items.to(device)
        other.r_hat = self.r_hat.to(device)
        other.weights = self.weights.to(device) if self.weights is not None else None
        other.adj = self.adj.to(device)
        return other

    @property
    def n_edges(self) -> int:
        return int(self.r_hat.values().numel())

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        return _SymmetricSpMM.apply(self.adj, x)

    def edge_dropout(self, rate: float, generator: torch.Generator) -> "Graph":
        """SGL-ED: keep each interaction with probability 1 - rate, then renormalise the kept graph."""
        # drawn on the CPU with the trainer's generator (the same draws on every device), built there, moved
        idx = self.r_hat.indices().cpu()
        keep = torch.rand(idx.shape[1], generator=generator) >= rate
        weights = self.weights.cpu()[keep] if self.weights is not None else None
        return Graph(idx[0, keep], idx[1, keep], self.n_users, self.n_items, self.backend, weights).to(self.device)


# backends implemented by a subclass, named "module:class": imported on first use (the main environment has no
# DGL, its torch is too new), and by name, so that this module never imports the subclass's module
SUBCLASSES = {"dgl": "lagcl.models.graph_dgl:DGLGraph"}


def _backend_class(backend: str) -> type[Graph]:
    module, _, name = SUBCLASSES[backend].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, OSError) as exc:  # OSError: a DGL whose native libraries do not load with this torch
        raise ConfigError(
            f"graph.backend=dgl needs DGL 2.1.0, which this Python ({sys.executable}) cannot import ({exc}). "
            "Run `make setup-dgl` to build .venv-dgl, then `make pipeline GRAPH=dgl` (the gcl stage runs "
            "there), or run this code with .venv-dgl/bin/python; otherwise use graph.backend=torch") from None


def light_layers(graph: Graph, ego: torch.Tensor, n_layers: int, perturb=None) -> list[torch.Tensor]:
    """[E^0, E^1, ..., E^L] with E^l = A E^(l-1) (LightGCN); `perturb(E^l)` is applied after each hop
    (XSimGCL adds its noise there)."""
    out = [ego]
    x = ego
    for _ in range(n_layers):
        x = graph.propagate(x)
        if perturb is not None:
            x = perturb(x)
        out.append(x)
    return out

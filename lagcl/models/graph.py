"""Graph propagation over the symmetric-normalised user-item bipartite adjacency.

All backbones propagate through this module only, so a second backend (DGL, `graph.backend`) can be
added here without touching the models. Nodes are users 0..n_users-1 followed by items.
"""

from __future__ import annotations

import warnings

import torch


from lagcl.errors import ConfigError


def normalized_interactions(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """R_hat = D_u^-1/2 R D_i^-1/2 as a sparse COO (n_users x n_items); duplicate edges count once."""
    key = torch.unique(users.long() * n_items + items.long())
    u, i = key // n_items, key % n_items
    du = torch.bincount(u, minlength=n_users).double()
    di = torch.bincount(i, minlength=n_items).double()
    val = (du[u].rsqrt() * di[i].rsqrt()).float()
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
    """A = [[0, R_hat], [R_hat^T, 0]] stored once as CSR; `propagate(x)` is A @ x."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                 backend: str = "torch"):
        if backend != "torch":
            raise ConfigError(f"graph.backend={backend!r} is not available in this build; use graph.backend=torch "
                              "(the DGL backend needs its own environment, see DESIGN.md 'Graph propagation')")
        self.n_users, self.n_items, self.backend = n_users, n_items, backend
        self.users, self.items = users.long(), items.long()
        self.r_hat = normalized_interactions(self.users, self.items, n_users, n_items)
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
    def n_edges(self) -> int:
        return int(self.r_hat.values().numel())

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        return _SymmetricSpMM.apply(self.adj, x)

    def edge_dropout(self, rate: float, generator: torch.Generator) -> "Graph":
        """SGL-ED: keep each interaction with probability 1 - rate, then renormalise the kept graph."""
        idx = self.r_hat.indices()
        keep = torch.rand(idx.shape[1], generator=generator) >= rate
        return Graph(idx[0, keep], idx[1, keep], self.n_users, self.n_items, self.backend)


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

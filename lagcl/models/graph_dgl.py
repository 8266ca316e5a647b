"""The DGL backend of `graph.Graph` (`graph.backend: dgl`), numerically equal to the torch backend.

The bipartite interactions become one homogeneous `dgl.graph` over users 0..n_users-1 followed by items,
holding both directions of every interaction (u -> i and i -> u). Its edges carry the symmetric
normalised weight w_ui = d_u^-1/2 d_i^-1/2 (`edata["w"]`, from DGL's in-degrees; they give `r_hat`), and
`propagate(x)` is A @ x for A = [[0, R_hat], [R_hat^T, 0]] by DGL message passing, in the factored form
DGL's own GraphConv(norm="both") uses:

    A x = D^-1/2 (sum over in-edges of the source's D^-1/2 x) = s * copy_u_sum(g, s * x),  s = deg^-1/2

rather than `u_mul_e_sum(g, x, w)` over the edge weights: the two are the same sum (checked in
tests/test_graph_dgl.py), but DGL 2.1.0's weighted CPU SpMM (u_mul_e) is far slower than its unweighted
one (copy_u), while the factored form keeps up with torch's CSR SpMM (timings: BENCHMARKS.md "Graph
backends"). `propagate_edge_weighted` keeps the weighted kernel for that comparison.

Numerical equality with graph.py: the interactions are deduplicated and ordered exactly as
`normalized_interactions` orders them (sorted user * n_items + item), degrees and weights are computed in
float64 and cast once (bit-identical weights and r_hat), and SGL's edge dropout draws the same one uniform
per interaction from the same generator, so both backends drop the same interactions. Only float32
rounding differs (the order and factoring of each node's sum, ~1e-7).

PyPI's DGL (2.1.0) loads only with torch 2.0.0-2.2.1, so this module is imported only when
graph.backend is dgl, and only in `.venv-dgl` (`make setup-dgl`; docs/design.md "Graph propagation").
"""

from __future__ import annotations

import dgl
import dgl.function as fn
import torch

from lagcl.errors import ConfigError
from lagcl.models.graph import Graph


def _match_torch_threads() -> None:
    """DGL's kernels run on the system libgomp, torch on its own bundled copy, so `torch.set_num_threads`
    (`gcl.num_threads`) does not reach DGL: mirror it, so both backends run with the same thread count."""
    n = torch.get_num_threads()
    if dgl.utils.get_num_threads() != n:
        dgl.utils.set_num_threads(n)


class DGLGraph(Graph):
    """`Graph` on a `dgl.graph`: edges 0..E-1 are user -> item, edges E..2E-1 the same interactions
    item -> user; `s` is each node's d^-1/2 (0 for a node without interactions, whose output is then 0
    as with the torch backend); `r_hat` (LightGCL's SVD input) is the same sparse R_hat as the torch
    backend's, built from the user -> item half and its weights."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                 backend: str = "dgl", weights: torch.Tensor | None = None):
        if weights is not None:
            raise ConfigError("weighted augmented edges (data_level.weights below 1) need graph.backend=torch; "
                              "the DGL backend builds unweighted graphs only")
        key = torch.unique(users.long() * n_items + items.long())  # graph.normalized_interactions' order
        u, i = key // n_items, key % n_items
        g = dgl.graph((torch.cat([u, i + n_users]), torch.cat([i + n_users, u])),
                      num_nodes=n_users + n_items, idtype=torch.int64)
        self._attach(g, n_users, n_items, users.long(), items.long())

    def _attach(self, g: dgl.DGLGraph, n_users: int, n_items: int, users: torch.Tensor,
                items: torch.Tensor) -> None:
        """Normalise `g` (both directions of each interaction, the u -> i half first) and keep it."""
        self.n_users, self.n_items, self.backend = n_users, n_items, "dgl"
        self.users, self.items, self.weights = users, items, None
        deg = g.in_degrees().double()  # a node's in-degree = its interactions
        s = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        g.ndata["s"] = s
        g.apply_edges(fn.u_mul_v("s", "s", "w"))  # float64 product, one cast: normalized_interactions' values
        g.edata["w"] = g.edata["w"].float()
        del g.ndata["s"]
        self.s = s.float().unsqueeze(1)
        g.create_formats_()  # build the sparse formats now, not inside the first timed propagation
        self.g = g
        n = g.num_edges() // 2
        src, dst = g.edges()
        self.r_hat = torch.sparse_coo_tensor(torch.stack([src[:n], dst[:n] - n_users]), g.edata["w"][:n],
                                             (n_users, n_items), is_coalesced=True, check_invariants=False)

    @property
    def n_edges(self) -> int:
        return self.g.num_edges() // 2

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """A @ x = s * copy_u_sum(g, s * x); DGL's gspmm autograd gives the backward pass."""
        _match_torch_threads()
        return self.s * dgl.ops.copy_u_sum(self.g, self.s * x)

    def edge_dropout(self, rate: float, generator: torch.Generator) -> "DGLGraph":
        """SGL-ED on the DGL graph: keep each interaction (both its edges) with probability 1 - rate, as a
        DGL edge subgraph over the same nodes, then renormalise on the kept graph's degrees. The uniforms
        are drawn exactly as the torch backend draws them, so a seed drops the same interactions."""
        n = self.n_edges
        keep = (torch.rand(n, generator=generator) >= rate).nonzero().squeeze(1)
        sub = dgl.edge_subgraph(self.g, torch.cat([keep, keep + n]), relabel_nodes=False, store_ids=False)
        src, dst = sub.edges()
        m = keep.numel()
        out = object.__new__(DGLGraph)
        out._attach(sub, self.n_users, self.n_items, src[:m], dst[:m] - self.n_users)
        return out


def propagate_edge_weighted(graph: DGLGraph, x: torch.Tensor) -> torch.Tensor:
    """A @ x as one weighted SpMM over the normalised edge weights (`update_all(u_mul_e, sum)` via
    `dgl.ops.u_mul_e_sum`): the same sum as `DGLGraph.propagate`, kept for the equivalence test and the
    kernel comparison in scripts/bench_graph.py."""
    _match_torch_threads()
    return dgl.ops.u_mul_e_sum(graph.g, x, graph.g.edata["w"])

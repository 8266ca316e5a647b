"""Propagation and the five backbones on a small hand-built bipartite graph."""

import pytest
import torch

from lagcl.config import GCLConfig
from lagcl.errors import ConfigError
from lagcl.models import Graph, build_model
from lagcl.models.graph import light_layers

USERS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 3])
ITEMS = torch.tensor([0, 1, 1, 0, 2, 3, 3, 4])
N_U, N_I = 4, 5


def dense_adjacency(weights: torch.Tensor | None = None) -> torch.Tensor:
    r = torch.zeros(N_U, N_I)
    r[USERS, ITEMS] = 1 if weights is None else weights
    a = torch.zeros(N_U + N_I, N_U + N_I)
    a[:N_U, N_U:], a[N_U:, :N_U] = r, r.T
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def test_propagation_equals_dense_symmetric_normalised_adjacency():
    g = Graph(USERS, ITEMS, N_U, N_I)
    x = torch.randn(N_U + N_I, 3)
    assert torch.allclose(g.propagate(x), dense_adjacency() @ x, atol=1e-6)


def test_propagation_gradient_equals_dense_reference():
    g = Graph(USERS, ITEMS, N_U, N_I)
    x = torch.randn(N_U + N_I, 3, requires_grad=True)
    w = torch.randn(N_U + N_I, 3)
    (g.propagate(g.propagate(x)) * w).sum().backward()
    a = dense_adjacency()
    assert torch.allclose(x.grad, a.T @ (a.T @ w), atol=1e-6)


def test_duplicate_edges_count_once():
    g = Graph(torch.cat([USERS, USERS[:2]]), torch.cat([ITEMS, ITEMS[:2]]), N_U, N_I)
    assert g.n_edges == len(USERS)
    x = torch.randn(N_U + N_I, 2)
    assert torch.allclose(g.propagate(x), dense_adjacency() @ x, atol=1e-6)


def test_weighted_edges_weigh_in_both_the_adjacency_and_the_degrees():
    w = torch.tensor([1, 1, 1, 1, 0.25, 1, 1, 0.5])
    g = Graph(USERS, ITEMS, N_U, N_I, weights=w)
    x = torch.randn(N_U + N_I, 3)
    assert torch.allclose(g.propagate(x), dense_adjacency(w) @ x, atol=1e-6)
    # an observed edge repeated as a weaker augmented one keeps its full weight
    dup = Graph(torch.cat([USERS, USERS[:1]]), torch.cat([ITEMS, ITEMS[:1]]), N_U, N_I,
                weights=torch.cat([w, torch.tensor([0.1])]))
    assert torch.allclose(dup.propagate(x), dense_adjacency(w) @ x, atol=1e-6)
    # edge dropout keeps the kept edges' weights
    kept = g.edge_dropout(0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(kept.propagate(x), dense_adjacency(w) @ x, atol=1e-6)


def test_lightgcn_embedding_is_the_mean_of_its_layers():
    model = build_model(GCLConfig(backbone="lightgcn", emb_dim=4, n_layers=2), Graph(USERS, ITEMS, N_U, N_I), 0)
    a, e0 = dense_adjacency(), model.ego.detach()
    expected = (e0 + a @ e0 + a @ a @ e0) / 3
    u, i = model.embeddings()
    assert torch.allclose(torch.cat([u, i]), expected, atol=1e-6)


def test_edge_dropout_keeps_about_one_minus_rate_of_the_edges_and_renormalises():
    n_u, n_i = 200, 300
    gen = torch.Generator().manual_seed(0)
    u, i = torch.randint(n_u, (5000,), generator=gen), torch.randint(n_i, (5000,), generator=gen)
    g = Graph(u, i, n_u, n_i)
    dropped = g.edge_dropout(0.3, gen)
    assert abs(dropped.n_edges / g.n_edges - 0.7) < 0.03
    # renormalised: every kept edge carries 1/sqrt(deg_u deg_i) of the *dropped* graph
    idx, val = dropped.r_hat.indices(), dropped.r_hat.values()
    du, di = torch.bincount(idx[0], minlength=n_u).float(), torch.bincount(idx[1], minlength=n_i).float()
    assert torch.allclose(val, (du[idx[0]] * di[idx[1]]).rsqrt())


def test_xsimgcl_noise_moves_each_layer_by_eps_and_keeps_signs():
    g = Graph(USERS, ITEMS, N_U, N_I)
    x = torch.randn(N_U + N_I, 6)
    gen = torch.Generator().manual_seed(0)
    eps = 0.1
    model = build_model(GCLConfig(backbone="xsimgcl", emb_dim=6, n_layers=1, eps=eps, l_star=1), g, 0)
    clean = light_layers(g, x, 1)[1]
    noisy = light_layers(g, x, 1, lambda h: h + torch.sign(h) * torch.nn.functional.normalize(
        torch.rand(h.shape, generator=gen), dim=-1) * eps)[1]
    assert torch.allclose((noisy - clean).norm(dim=-1), torch.full((N_U + N_I,), eps), atol=1e-6)
    assert bool(((noisy * clean) >= 0).all())
    enc = model.encode(torch.Generator().manual_seed(1))
    u, _ = model.embeddings()
    assert not torch.allclose(enc.user, u)  # training pass is perturbed, inference pass is not


def test_lightgcl_svd_view_propagates_through_the_rank_q_reconstruction():
    g = Graph(USERS, ITEMS, N_U, N_I)
    model = build_model(GCLConfig(backbone="lightgcl", emb_dim=3, n_layers=1, svd_q=4, drop_rate=0.0), g, 0)
    enc = model.encode(torch.Generator().manual_seed(0))
    r_hat = dense_adjacency()[:N_U, N_U:]
    low = model.us @ model.v_t  # U S V^T with q = min(n_u, n_i) = 4 reconstructs R_hat exactly
    assert torch.allclose(low, r_hat, atol=1e-4)
    (gu, gi) = enc.views[1]
    eu, ei = model.user_emb.detach(), model.item_emb.detach()
    assert torch.allclose(gu, eu + r_hat @ ei, atol=1e-4)
    assert torch.allclose(gi, ei + r_hat.T @ eu, atol=1e-4)


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "sgl", "lightgcl", "xsimgcl"])
def test_every_backbone_gives_two_views_when_contrastive_and_scores_all_items(backbone):
    model = build_model(GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, svd_q=2),
                        Graph(USERS, ITEMS, N_U, N_I), 0)
    enc = model.encode(torch.Generator().manual_seed(0))
    assert enc.user.shape == (N_U, 8) and enc.item.shape == (N_I, 8)
    assert (enc.views is not None) == (backbone in ("sgl", "lightgcl", "xsimgcl"))
    if enc.views is not None:
        for (u, i) in enc.views:
            assert u.shape == (N_U, 8) and i.shape == (N_I, 8)
    scores = model.score(torch.tensor([1, 3]))
    u, i = model.embeddings()
    assert torch.allclose(scores, u[[1, 3]] @ i.T)


def test_same_seed_builds_the_same_model_without_moving_the_global_rng():
    cfg = GCLConfig(backbone="lightgcl", emb_dim=4, svd_q=2)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = build_model(cfg, Graph(USERS, ITEMS, N_U, N_I), 7)
    after = torch.rand(1)
    b = build_model(cfg, Graph(USERS, ITEMS, N_U, N_I), 7)
    assert torch.equal(before, after)
    assert torch.equal(a.user_emb, b.user_emb) and torch.equal(a.us, b.us)


def test_unknown_graph_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown graph.backend='cugraph'; choose one of torch, dgl"):
        Graph(USERS, ITEMS, N_U, N_I, backend="cugraph")

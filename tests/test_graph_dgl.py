"""The DGL graph backend (lagcl/models/graph_dgl.py) equals the torch backend (graph.py): the same
normalised weights, propagation and gradients to float tolerance, the same edge dropout, the same losses
and gradients for every backbone, the same ML-100K metrics after 3 LightGCN epochs, and the gcl stage
run with graph.backend=dgl, in this environment and from the main one.

These tests need DGL 2.1.0, so they run in .venv-dgl: `make test-dgl` (part of .ci/run). The main
`make test` deselects them (`-m "not dgl"`); run anywhere else, they fail instead of skipping.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from lagcl.artifacts import is_complete, read_table
from lagcl.config import GCLConfig, RankConfig, load_config
from lagcl.models import Graph, build_model
from lagcl.measure import validate
from lagcl.train import batch_losses, train
from lagcl.train_data import build_train_data, category_groups
from tasks import control as control_stage
from tasks import dgl as dgl_env
from tasks import gcl as gcl_stage
from tasks.base import make_plan

pytestmark = pytest.mark.dgl

REPO = Path(__file__).resolve().parent.parent
BACKBONES = ["mf", "lightgcn", "sgl", "lightgcl", "xsimgcl"]
USERS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 3])
ITEMS = torch.tensor([0, 1, 1, 0, 2, 3, 3, 4])
N_U, N_I = 4, 5


@pytest.fixture(scope="module", autouse=True)
def dgl_module():
    """DGL itself: an environment without it is a failure here, never a skip."""
    try:
        import dgl
    except Exception as exc:  # ImportError, or DGL's own error when torch is outside 2.0.0-2.2.1
        pytest.fail(f"these tests need dgl==2.1.0 ({sys.executable} cannot import it: {exc}); "
                    "run them with `make test-dgl` (it builds .venv-dgl)")
    assert dgl.__version__ == "2.1.0"
    return dgl


def random_graph(seed: int, n_users: int = 60, n_items: int = 80, n: int = 900):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n_users, (n,), generator=g), torch.randint(n_items, (n,), generator=g), n_users, n_items


def both(users, items, n_users, n_items) -> tuple[Graph, Graph]:
    return Graph(users, items, n_users, n_items, "torch"), Graph(users, items, n_users, n_items, "dgl")


def dense_adjacency() -> torch.Tensor:
    r = torch.zeros(N_U, N_I)
    r[USERS, ITEMS] = 1
    a = torch.zeros(N_U + N_I, N_U + N_I)
    a[:N_U, N_U:], a[N_U:, :N_U] = r, r.T
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def test_graph_backend_dgl_builds_a_dgl_graph_holding_both_directions_of_each_interaction(dgl_module):
    g = Graph(USERS, ITEMS, N_U, N_I, "dgl")
    assert type(g).__name__ == "DGLGraph" and isinstance(g, Graph) and g.backend == "dgl"
    assert isinstance(g.g, dgl_module.DGLGraph) and g.g.num_nodes() == N_U + N_I
    src, dst = g.g.edges()
    assert g.n_edges == len(USERS) and g.g.num_edges() == 2 * len(USERS)
    forward = set(zip(src[:g.n_edges].tolist(), dst[:g.n_edges].tolist()))
    assert forward == {(u, i + N_U) for u, i in zip(USERS.tolist(), ITEMS.tolist())}
    assert torch.equal(src[g.n_edges:], dst[:g.n_edges]) and torch.equal(dst[g.n_edges:], src[:g.n_edges])


def test_normalised_edge_weights_and_r_hat_are_bit_identical_to_the_torch_backend():
    gt, gd = both(*random_graph(0))
    assert torch.equal(gt.r_hat.indices(), gd.r_hat.indices())
    assert torch.equal(gt.r_hat.values(), gd.r_hat.values())
    w = gd.g.edata["w"]
    assert torch.equal(w[:gd.n_edges], gt.r_hat.values()) and torch.equal(w[gd.n_edges:], gt.r_hat.values())


def test_propagation_equals_the_dense_reference_and_the_torch_backend():
    g = Graph(USERS, ITEMS, N_U, N_I, "dgl")
    x = torch.randn(N_U + N_I, 3)
    assert torch.allclose(g.propagate(x), dense_adjacency() @ x, atol=1e-6)
    gt, gd = both(*random_graph(1))
    x = torch.randn(gt.n_users + gt.n_items, 16)
    assert torch.allclose(gd.propagate(x), gt.propagate(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(gd.propagate(gd.propagate(gd.propagate(x))), gt.propagate(gt.propagate(gt.propagate(x))),
                          rtol=1e-5, atol=1e-6)


def test_factored_propagation_equals_dgls_edge_weighted_spmm():
    from lagcl.models.graph_dgl import propagate_edge_weighted

    _, gd = both(*random_graph(2))
    x = torch.randn(gd.n_users + gd.n_items, 8)
    assert torch.allclose(gd.propagate(x), propagate_edge_weighted(gd, x), rtol=1e-5, atol=1e-6)


def test_propagation_gradient_equals_the_torch_backend():
    gt, gd = both(*random_graph(3))
    x = torch.randn(gt.n_users + gt.n_items, 8, requires_grad=True)
    w = torch.randn(gt.n_users + gt.n_items, 8)
    grads = [torch.autograd.grad((g.propagate(g.propagate(x)) * w).sum(), x)[0] for g in (gt, gd)]
    assert torch.allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_a_node_without_interactions_propagates_to_zero_on_both_backends():
    users, items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])  # user 2 and item 2 have no edge
    gt, gd = both(users, items, 3, 3)
    x = torch.randn(6, 4)
    out = gd.propagate(x)
    assert torch.isfinite(out).all() and torch.equal(out[[2, 5]], torch.zeros(2, 4))
    assert torch.allclose(out, gt.propagate(x), atol=1e-6)


def test_edge_dropout_drops_the_same_interactions_on_both_backends_and_renormalises():
    gt, gd = both(*random_graph(4, n_users=200, n_items=300, n=5000))
    dt = gt.edge_dropout(0.3, torch.Generator().manual_seed(9))
    dd = gd.edge_dropout(0.3, torch.Generator().manual_seed(9))
    assert type(dd).__name__ == "DGLGraph" and abs(dd.n_edges / gd.n_edges - 0.7) < 0.03
    assert torch.equal(dd.r_hat.indices(), dt.r_hat.indices())
    assert torch.equal(dd.r_hat.values(), dt.r_hat.values())  # renormalised on the kept graph's degrees
    x = torch.randn(gd.n_users + gd.n_items, 8)
    assert torch.allclose(dd.propagate(x), dt.propagate(x), rtol=1e-5, atol=1e-6)


def tiny_data(seed: int = 0, n_users: int = 30, n_items: int = 45):
    """Per user 12 distinct items: 8 training positives, 2 training dislikes, 1 valid, 1 test."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(n_users):
        for k, i in enumerate(torch.randperm(n_items, generator=g)[:12].tolist()):
            sign = -1 if k in (8, 9) else 1
            split = "valid" if k == 10 else "test" if k == 11 else "train"
            rows.append({"user": u, "item": i, "rating": 2.0 if sign < 0 else 5.0, "timestamp": k, "sign": sign,
                         "split": split})
    inter = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64,
                                       "timestamp": pl.Int64, "sign": pl.Int8, "split": pl.String})
    items = pl.DataFrame({"item": pl.Series(range(n_items), dtype=pl.Int32),
                          "raw_id": [str(i) for i in range(n_items)], "title": [f"t{i}" for i in range(n_items)],
                          "categories": [[["Action", "Comedy", "Drama"][i % 3]] for i in range(n_items)],
                          "year": ["1995"] * n_items})
    users = pl.DataFrame({"user": pl.Series(range(n_users), dtype=pl.Int32),
                          "raw_id": [str(u) for u in range(n_users)]})
    return inter, users, items


@pytest.mark.parametrize("rank_level", [False, True], ids=["base", "rank"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_has_the_same_losses_and_gradients_on_both_backends(backbone, rank_level):
    inter, users, items = tiny_data()
    ug, ig = category_groups(inter, items, users.height, items.height)
    data = build_train_data(inter, users.height, items.height, None, ug, ig)
    gcl = GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, svd_q=3, lambda_cl=0.2, drop_rate=0.2, eps=0.1)
    rank = RankConfig(w_h=2.0, lambda_cl=0.2) if rank_level else None
    users_b, items_b = data.edge_users[:64], data.edge_items[:64]
    negs = data.sampler.sample(users_b, torch.Generator().manual_seed(5))
    out = {}
    for backend in ("torch", "dgl"):
        model = build_model(gcl, Graph(data.edge_users, data.edge_items, users.height, items.height, backend), 7)
        gen = torch.Generator().manual_seed(11)
        model.new_epoch(gen)
        parts = batch_losses(model, data, users_b, items_b, negs, gcl, rank, gen)
        parts["loss"].backward()
        out[backend] = ({k: float(v) for k, v in parts.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_t, grad_t), (loss_d, grad_d) = out["torch"], out["dgl"]
    assert loss_d == pytest.approx(loss_t, rel=1e-5, abs=1e-7)
    if backbone in ("sgl", "lightgcl", "xsimgcl"):
        assert loss_t["cl"] > 0  # the contrastive part (and so the dropped / noisy views) is compared too
    assert grad_t.keys() == grad_d.keys() == {"user_emb", "item_emb"}
    for name in grad_t:
        assert torch.allclose(grad_d[name], grad_t[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("backbone", ["sgl", "xsimgcl"])
def test_two_training_epochs_follow_the_same_trajectory_on_both_backends(backbone):
    inter, users, items = tiny_data(1)
    data = build_train_data(inter, users.height, items.height)
    gcl = GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, epochs=2, patience=5, batch_size=64, lr=0.01,
                    lambda_cl=0.1)
    epochs = {}
    for backend in ("torch", "dgl"):
        model = build_model(gcl, Graph(data.edge_users, data.edge_items, users.height, items.height, backend), 3)
        epochs[backend] = train(model, data, gcl, None, seed=3, progress=False).epochs
    for col in ("loss", "rec", "cl"):
        assert epochs["dgl"][col].to_list() == pytest.approx(epochs["torch"][col].to_list(), rel=1e-4)
    assert epochs["dgl"]["valid_recall@20"].to_list() == epochs["torch"]["valid_recall@20"].to_list()


@pytest.fixture(scope="module")
def ml100k_prepared():
    from lagcl.data.fetch import ensure_ml100k
    from lagcl.data.prepare import prepare
    from lagcl.data.readers import read_raw

    raw_dir = ensure_ml100k(REPO / "cache" / "raw" / "ml-100k")
    cfg = load_config(overrides=[f"data.path={raw_dir}"])
    return prepare(read_raw(cfg.data, REPO), cfg.data, cfg.seed)


def test_three_lightgcn_epochs_on_ml100k_give_the_same_metrics_on_both_backends(ml100k_prepared):
    out = ml100k_prepared
    n_users, n_items = out.users.height, out.items.height
    data = build_train_data(out.interactions, n_users, n_items)
    cfg = load_config(model="lightgcn", overrides=["gcl.epochs=3", "gcl.patience=10"])
    metrics, epochs = {}, {}
    for backend in ("torch", "dgl"):
        model = build_model(cfg.gcl, Graph(data.edge_users, data.edge_items, n_users, n_items, backend), cfg.seed)
        result = train(model, data, cfg.gcl, None, cfg.seed, progress=False)
        epochs[backend] = result.epochs
        metrics[backend] = {s: validate(model, data, ks=(10, 20, 50), split=s) for s in ("valid", "test")}
    assert epochs["dgl"].height == epochs["torch"].height == 3
    assert epochs["dgl"]["loss"].to_list() == pytest.approx(epochs["torch"]["loss"].to_list(), rel=1e-4)
    for col in ("valid_recall@20", "valid_ndcg@20"):  # every epoch, not only the best one kept
        assert epochs["dgl"][col].to_list() == pytest.approx(epochs["torch"][col].to_list(), abs=1e-4)
    for split in ("valid", "test"):
        for key, value in metrics["torch"][split].items():
            assert metrics["dgl"][split][key] == pytest.approx(value, abs=1e-4), (split, key)
    assert metrics["torch"]["test"][("recall", 20)] > 0.15  # it trained (a random ranking is ~0.02)


def write_tiny_prepare(plan):
    inter, users, items = tiny_data(2)
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users), ("items", items)):
            sd.write_table(name, df)
        sd.finish({})


def tiny_gcl_config(tmp_path, backend: str, backbone: str = "sgl"):
    return load_config(model=backbone, overrides=[f"cache_dir={tmp_path}", "gcl.epochs=3", "gcl.emb_dim=8",
                                                  "gcl.topk_out=5", "rank.groups_from=categories",
                                                  f"graph.backend={backend}"])


def test_gcl_stage_with_graph_backend_dgl_trains_here_and_matches_the_torch_backend(tmp_path):
    refs = {}
    for backend in ("torch", "dgl"):
        plan = make_plan(tiny_gcl_config(tmp_path, backend))
        write_tiny_prepare(plan)
        assert not dgl_env.runs_in_dgl_env(plan)  # DGL is importable here: no subprocess
        control_stage.run(plan)
        refs[backend] = Path(gcl_stage.run(plan).path)
    assert refs["torch"] != refs["dgl"]  # graph.backend is part of the gcl fingerprint
    manifest = json.loads((refs["dgl"] / "manifest.json").read_text())
    assert is_complete(refs["dgl"]) and manifest["config"]["graph"] == {"backend": "dgl"}
    assert read_table(refs["dgl"], "epochs").height == 3  # the rank variant; the control is its own stage
    m = {b: read_table(p, "metrics").sort("variant", "split", "protocol", "segment", "metric", "k")
         for b, p in refs.items()}
    assert m["dgl"]["value"].to_list() == pytest.approx(m["torch"]["value"].to_list(), abs=1e-4)


def test_main_environment_runs_the_gcl_stage_in_this_environment_and_gets_a_complete_folder(tmp_path):
    """The real two-environment path: the main .venv (no DGL) runs gcl_stage.run with graph.backend=dgl,
    which hands the stage to this interpreter (LAGCL_DGL_PYTHON) and returns its folder."""
    main_python = Path(os.environ.get("LAGCL_MAIN_PYTHON", REPO / ".venv" / "bin" / "python"))
    if not main_python.is_file():
        pytest.fail(f"this test needs the main environment's Python {main_python}: run `make setup` "
                    "(`make test-dgl` does) or set LAGCL_MAIN_PYTHON")
    plan = make_plan(tiny_gcl_config(tmp_path, "dgl", backbone="lightgcn"))
    write_tiny_prepare(plan)
    script = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from lagcl.config import Config\n"
        "from tasks import control, dgl, gcl\n"
        "from tasks.base import make_plan\n"
        "plan = make_plan(Config.model_validate(json.loads(sys.argv[1])))\n"
        "assert dgl.runs_in_dgl_env(plan), 'the main environment was expected to have no DGL'\n"
        "control.run(plan)\n"
        "print('REF', gcl.run(plan).path)\n"
    )
    env = {**os.environ, "LAGCL_DGL_PYTHON": sys.executable}
    proc = subprocess.run([str(main_python), "-c", script, json.dumps(plan.cfg.model_dump(mode="json"))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(next(ln for ln in proc.stdout.splitlines() if ln.startswith("REF "))[4:])
    assert path == Path(plan.ref("gcl").path) and is_complete(path)
    assert "running the stage in the DGL environment" in proc.stderr
    # the children's log lines came through the parent's logger
    assert "control lightgcn: best epoch" in proc.stderr and "gcl lightgcn: chosen" in proc.stderr
    assert read_table(path, "epochs").height == 3
    assert read_table(path, "cf_topk").height == 30 * 5
    assert (path / "checkpoints" / "rank" / "last.pt").is_file() and (path / "model.pt").is_file()

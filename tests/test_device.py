"""The device plumbing on a CPU machine: gcl.device / rerank.spec.device settings, a `cpu` round trip of the
graph and the trainer, and the all-rank evaluation that ranks on whatever device the scores are on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lagcl.config import GCLConfig, RankConfig, load_config
from lagcl.evaluate import UserItems, rank_topk
from lagcl.models import Graph, build_model
from lagcl.train import train
from lagcl.train_data import build_train_data, category_groups

from test_train import tiny_tables


def test_device_settings_are_validated_in_the_config():
    cfg = load_config(overrides=["gcl.device=cpu", "rerank.spec.device=cuda:1"])
    assert cfg.gcl.device == "cpu" and cfg.rerank.spec.device == "cuda:1"
    assert load_config().gcl.device == "auto"
    with pytest.raises(Exception, match="device"):
        load_config(overrides=["gcl.device=gpu0"])


def test_a_graph_moved_to_its_own_device_is_the_same_graph_and_a_copy_keeps_its_values():
    g = Graph(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2, 2)
    assert g.to("cpu") is g and g.device == torch.device("cpu")
    x = torch.randn(4, 3)
    moved = g.to(torch.device("cpu"))
    assert torch.equal(moved.propagate(x), g.propagate(x))


def _fit(backbone: str, device: str, tmp_path: Path):
    inter, users, items = tiny_tables()
    ug, ig = category_groups(inter, items, users.height, items.height)
    data = build_train_data(inter, users.height, items.height, None, ug, ig, dislike_prob=0.3)
    gcl = GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, epochs=3, patience=50, batch_size=64, lr=0.01,
                    lambda_cl=0.2, device=device)
    model = build_model(gcl, Graph(data.edge_users, data.edge_items, users.height, items.height), 3)
    return train(model, data, gcl, RankConfig(w_h=2.0), seed=3, ckpt_dir=tmp_path, progress=False), model


@pytest.mark.parametrize("backbone", ["lightgcn", "sgl", "xsimgcl"])
def test_gcl_device_cpu_and_auto_on_a_cpu_machine_train_the_same_model(tmp_path, monkeypatch, backbone):
    """auto resolves to the CPU without CUDA; edge dropout (SGL) and noise (XSimGCL) are drawn on the CPU
    generator either way, so both runs are equal to the bit."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a, model = _fit(backbone, "cpu", tmp_path / "a")
    b, _ = _fit(backbone, "auto", tmp_path / "b")
    assert a.epochs["valid_recall@20"].to_list() == b.epochs["valid_recall@20"].to_list()
    assert a.epochs["loss"].to_list() == b.epochs["loss"].to_list()
    for name, value in a.best_state.items():
        assert value.device.type == "cpu" and torch.equal(value, b.best_state[name]), name
    assert model.graph.device == torch.device("cpu")


def test_all_rank_evaluation_masks_and_ranks_on_the_scores_device_and_returns_cpu_lists():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.4, 0.1], [0.0, 0.1, 1.0, 2.0]])
    exclude = UserItems.from_pairs(torch.tensor([0, 2]), torch.tensor([0, 3]), 3, 4)
    seen = []

    def score_fn(users):
        seen.append(users.tolist())
        return scores[users]

    items, top = rank_topk(score_fn, torch.arange(3), 2, exclude, batch_size=2)
    assert seen == [[0, 1], [2]]                                   # user batches
    assert items.tolist() == [[1, 3], [2, 1], [2, 1]]              # user 0 never gets item 0, user 2 never item 3
    assert top.flatten().tolist() == pytest.approx([0.8, 0.5, 0.4, 0.3, 1.0, 0.1])
    assert items.device.type == "cpu" and top.device.type == "cpu"

"""Negative sampling, training data, resumable training, the validation metric, and the gcl stage end to end
(tiny data)."""

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from lagcl.artifacts import read_table
from lagcl.config import GCLConfig, RankConfig, load_config
from lagcl.models import Graph, build_model
from lagcl.sampling import NegativeSampler
from lagcl.train import CKPT_VERSION, Trainer, TrainState, train
from lagcl.train_data import build_train_data, category_groups
from tasks import control as control_stage
from tasks import gcl as gcl_stage
from tasks.base import make_plan


def test_sampler_never_returns_a_positive_of_the_user():
    gen = torch.Generator().manual_seed(0)
    n_u, n_i = 20, 30
    pu, pi = torch.randint(n_u, (400,), generator=gen), torch.randint(n_i, (400,), generator=gen)
    pu, pi = torch.cat([pu, torch.zeros(29, dtype=torch.long)]), torch.cat([pi, torch.arange(29)])  # user 0: one free item
    du, di = torch.randint(n_u, (100,), generator=gen), torch.randint(n_i, (100,), generator=gen)
    s = NegativeSampler(n_u, n_i, pu, pi, du, di, dislike_prob=0.5)
    users = torch.randint(n_u, (20000,), generator=gen)
    neg = s.sample(users, gen)
    positives = set(zip(pu.tolist(), pi.tolist()))
    assert not any((u, j) in positives for u, j in zip(users.tolist(), neg.tolist()))
    assert set(neg[users == 0].tolist()) == {29}


def test_sampler_draws_known_dislikes_with_the_configured_probability():
    gen = torch.Generator().manual_seed(1)
    n_u, n_i = 50, 1000
    pu, pi = torch.arange(n_u), torch.zeros(n_u, dtype=torch.long)
    du = torch.arange(n_u).repeat_interleave(3)
    di = (torch.arange(n_u * 3) % 3) + 1  # every user dislikes items 1, 2, 3
    for p in (0.0, 0.3, 0.8):
        s = NegativeSampler(n_u, n_i, pu, pi, du, di, dislike_prob=p)
        neg = s.sample(torch.randint(n_u, (40000,), generator=gen), gen)
        share = torch.isin(neg, torch.tensor([1, 2, 3])).float().mean().item()
        expected = p + (1 - p) * 3 / 999  # uniform draws can hit a dislike too
        assert abs(share - expected) < 0.01


def test_a_dislike_that_is_also_a_positive_is_never_drawn():
    gen = torch.Generator().manual_seed(2)
    s = NegativeSampler(1, 10, torch.tensor([0]), torch.tensor([4]), torch.tensor([0]), torch.tensor([4]), 1.0)
    assert 4 not in s.sample(torch.zeros(1000, dtype=torch.long), gen).tolist()


def tiny_tables(seed=0, n_users=40, n_items=60):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(n_users):
        items = torch.randperm(n_items, generator=g)[:18].tolist()
        for k, i in enumerate(items):
            split = "train" if k < 10 else ("valid" if k < 12 else "test")
            sign = -1 if k in (8, 9) else 1
            rows.append({"user": u, "item": i, "rating": 2.0 if sign < 0 else 5.0, "timestamp": k,
                         "sign": sign, "split": "train" if sign < 0 else split})
    inter = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64,
                                       "timestamp": pl.Int64, "sign": pl.Int8, "split": pl.String})
    genres = ["Action", "Comedy", "Drama"]
    items = pl.DataFrame({"item": pl.Series(range(n_items), dtype=pl.Int32),
                          "raw_id": [str(i) for i in range(n_items)], "title": [f"t{i}" for i in range(n_items)],
                          "categories": [[genres[i % 3], "War"] for i in range(n_items)],
                          "year": ["1995"] * n_items})
    users = pl.DataFrame({"user": pl.Series(range(n_users), dtype=pl.Int32), "raw_id": [str(u) for u in range(n_users)]})
    return inter, users, items


def test_stand_in_groups_are_first_genre_and_the_users_most_frequent_one():
    inter = pl.DataFrame({"user": [0, 0, 0, 1, 1], "item": [0, 1, 2, 2, 0], "sign": [1, 1, 1, 1, -1],
                          "split": ["train", "train", "valid", "train", "train"]},
                         schema_overrides={"sign": pl.Int8})
    items = pl.DataFrame({"item": [0, 1, 2], "categories": [["Drama", "War"], ["Drama"], ["Action"]]})
    ug, ig = category_groups(inter, items, 3, 3)
    assert ig.tolist() == [1, 1, 0]  # Action=0, Drama=1
    assert ug[0] == 1 and ug[1] == 0  # user 1's only training positive is Action; its Drama is a dislike
    assert ug[2] not in (0, 1)  # no training positives: a group of its own kind


def test_training_data_keeps_negatives_out_of_the_graph_and_augmented_positives_in():
    inter, users, items = tiny_tables()
    unseen = sorted(set(range(items.height)) - set(inter.filter(pl.col("user") == 0)["item"].to_list()))
    aug = pl.DataFrame({"user": [0, 0], "item": unseen[:2], "sign": [1, -1], "score": [0.9, 0.8]},
                       schema_overrides={"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8})
    data = build_train_data(inter, users.height, items.height, aug)
    edges = set(zip(data.edge_users.tolist(), data.edge_items.tolist()))
    train_pos = inter.filter((pl.col("sign") > 0) & (pl.col("split") == "train"))
    assert edges == set(zip(train_pos["user"].to_list(), train_pos["item"].to_list())) | {(0, unseen[0])}
    assert data.info["dislikes"] == inter.filter(pl.col("sign") < 0).height + 1
    gen = torch.Generator().manual_seed(0)
    assert unseen[1] in data.sampler.d_items.tolist()  # the augmented negative is a known dislike
    assert unseen[0] not in data.sampler.sample(torch.zeros(2000, dtype=torch.long), gen).tolist()


def _run(backbone: str, ckpt: Path, stop_after=None, epochs=4):
    inter, users, items = tiny_tables()
    ug, ig = category_groups(inter, items, users.height, items.height)
    data = build_train_data(inter, users.height, items.height, None, ug, ig, dislike_prob=0.3)
    gcl = GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, epochs=epochs, patience=50, batch_size=64,
                    lr=0.01, lambda_cl=0.2)
    model = build_model(gcl, Graph(data.edge_users, data.edge_items, users.height, items.height), 3)
    result = train(model, data, gcl, RankConfig(w_h=2.0), seed=3, ckpt_dir=ckpt, progress=False,
                   stop_after=stop_after)
    return result, torch.load(ckpt / "last.pt", weights_only=False)


@pytest.mark.parametrize("backbone", ["sgl", "xsimgcl"])
def test_a_run_killed_after_an_epoch_resumes_to_the_same_result_as_an_uninterrupted_one(tmp_path, backbone):
    full, full_ck = _run(backbone, tmp_path / "a")
    first, _ = _run(backbone, tmp_path / "b", stop_after=2)
    assert first.epochs.height == 2
    resumed, resumed_ck = _run(backbone, tmp_path / "b")
    assert resumed.resumed_from == 2
    for name, value in full_ck["model"].items():
        assert torch.equal(value, resumed_ck["model"][name]), name
    for name, value in full.best_state.items():
        assert torch.equal(value, resumed.best_state[name]), name
    cols = ["epoch", "loss", "valid_recall@20"]
    assert full.epochs.select(cols).equals(resumed.epochs.select(cols))


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    result, ck = _run("lightgcn", tmp_path, epochs=6)
    best = result.epochs.filter(pl.col("best"))["epoch"].max()
    assert result.best_epoch == best == ck["best_epoch"]
    assert result.epochs["valid_recall@20"].max() == result.epochs.filter(pl.col("epoch") == best)["valid_recall@20"][0]


def _lightgcn(**settings):
    inter, users, items = tiny_tables()
    ug, ig = category_groups(inter, items, users.height, items.height)
    data = build_train_data(inter, users.height, items.height, None, ug, ig, dislike_prob=0.3)
    gcl = GCLConfig(**{"backbone": "lightgcn", "emb_dim": 8, "n_layers": 2, "epochs": 8, "patience": 50,
                       "batch_size": 64, "lr": 0.01, "device": "cpu", **settings})
    return build_model(gcl, Graph(data.edge_users, data.edge_items, users.height, items.height), 3), data, gcl


def test_the_validation_metric_setting_picks_the_best_epoch_and_the_early_stop():
    # on this data Recall@20 peaks at epoch 1 and NDCG@10 later: same training, other epoch kept
    runs = {}
    for metric in ("recall@20", "ndcg@10"):
        model, data, gcl = _lightgcn(valid_metric=metric, patience=2)
        runs[metric] = train(model, data, gcl, None, seed=3, progress=False)
    for metric, result in runs.items():
        column = result.epochs[f"valid_{metric}"]
        assert result.best_epoch == column.arg_max() + 1
        assert result.epochs.filter(pl.col("best"))["epoch"].max() == result.best_epoch
        # stopped `patience` epochs after its own best one
        assert result.epochs.height == result.best_epoch + 2
    assert runs["recall@20"].best_epoch != runs["ndcg@10"].best_epoch
    shared = min(r.epochs.height for r in runs.values())
    assert runs["recall@20"].epochs["loss"][:shared].equals(runs["ndcg@10"].epochs["loss"][:shared])


def test_the_weights_kept_are_those_of_the_best_epoch_by_the_validation_metric(tmp_path):
    model, data, gcl = _lightgcn(valid_metric="ndcg@10", epochs=5)
    result = train(model, data, gcl, None, seed=3, progress=False)
    model, data, gcl = _lightgcn(valid_metric="ndcg@10", epochs=5)
    train(model, data, gcl, None, seed=3, ckpt_dir=tmp_path, progress=False, stop_after=result.best_epoch)
    at_best = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    for name, value in result.best_state.items():
        assert torch.equal(value, at_best[name]), name


def test_a_checkpoint_restores_every_part_of_the_training_state(tmp_path):
    model, data, gcl = _lightgcn(epochs=4)
    trainer = Trainer(model, data, gcl, None, seed=3)
    trainer.fit(progress=False, stop_after=2)
    torch.save(trainer.state.checkpoint(), tmp_path / "last.pt")

    other, _, _ = _lightgcn(epochs=4)
    torch.nn.init.normal_(other.user_emb)  # other weights: the checkpoint must replace them all
    resumed = Trainer(other, data, gcl, None, seed=99)
    resumed.resume_checkpoint(tmp_path / "last.pt")
    a, b = trainer.state, resumed.state
    for name in ("epoch", "best", "best_epoch", "bad", "rows", "train_seconds"):
        assert getattr(a, name) == getattr(b, name), name
    for mine, theirs in ((a.model.state_dict(), b.model.state_dict()), (a.best_state, b.best_state)):
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert a.optimizer.state_dict()["state"].keys() == b.optimizer.state_dict()["state"].keys()
    for k, s in a.optimizer.state_dict()["state"].items():
        assert all(torch.equal(v, b.optimizer.state_dict()["state"][k][n]) for n, v in s.items())
    # and both go on to the same run
    first, second = trainer.fit(progress=False), resumed.fit(progress=False)
    assert first.resumed_from == second.resumed_from == 2
    timing = ["train_seconds", "eval_seconds"]
    assert first.epochs.drop(timing).equals(second.epochs.drop(timing))
    assert all(torch.equal(v, second.best_state[k]) for k, v in first.best_state.items())


def test_a_checkpoint_of_another_version_is_refused_not_misread(tmp_path):
    model, data, gcl = _lightgcn()
    trainer = Trainer(model, data, gcl, None, seed=3)
    torch.save({**trainer.state.checkpoint(), "version": CKPT_VERSION + 1}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="checkpoint version"):
        trainer.resume_checkpoint(tmp_path / "last.pt")


def test_early_stopping_waits_for_patience_epochs_without_a_better_value_and_for_min_epochs():
    gcl = GCLConfig(patience=2, min_epochs=5)
    model = torch.nn.Linear(2, 1)
    state = TrainState(model, torch.optim.Adam(model.parameters()), torch.Generator(), model.state_dict())
    stops = []
    for value in (0.3, 0.2, 0.1, 0.4, 0.4, 0.1, 0.2):  # a tie is no improvement
        state.record(value)
        stops.append(state.stopped(gcl))
    # epoch 3 is patience epochs past the best but before min_epochs; epoch 5 is the first to stop
    assert stops == [False, False, False, False, False, True, True]
    assert (state.best, state.best_epoch, state.bad) == (0.4, 4, 3)


def test_gcl_stage_writes_the_chosen_models_checkpoint_topk_levels_epochs_and_metrics(tmp_path):
    cfg = load_config(model="xsimgcl", overrides=[f"cache_dir={tmp_path}", "gcl.epochs=2", "gcl.emb_dim=8",
                                                  "gcl.topk_out=5", "rank.groups_from=categories",
                                                  "gate.enabled=false"])
    plan = make_plan(cfg)
    inter, users, items = tiny_tables()
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users), ("items", items)):
            sd.write_table(name, df)
        sd.finish({})
    control_stage.run(plan)
    ref = gcl_stage.run(plan)
    path = Path(ref.path)
    topk = read_table(path, "cf_topk")
    assert topk.height == users.height * 5 and topk["rank"].to_list()[:5] == [1, 2, 3, 4, 5]
    train_pos = inter.filter((pl.col("split") == "train") & (pl.col("sign") > 0)).select("user", "item")
    assert topk.join(train_pos, on=["user", "item"]).height == 0
    metrics = read_table(path, "metrics")
    assert set(metrics["split"]) == {"valid", "test"} and set(metrics["k"]) == {10, 20, 50}
    assert set(metrics["variant"]) == {"control", "rank"} and set(metrics["protocol"]) == {"all", "dislikes masked"}
    assert read_table(path, "epochs").height == 2
    meta = json.loads((path / "manifest.json").read_text())["meta"]
    test_r20 = metrics.filter((pl.col("variant") == "rank") & (pl.col("split") == "test") & (pl.col("protocol") == "all")
                              & (pl.col("segment") == "all") & (pl.col("metric") == "recall") & (pl.col("k") == 20))
    # gate.enabled=false: the rank level is kept whatever validation says
    assert meta["test_recall@20"] == test_r20["value"][0] and meta["rank_level"] is True
    assert read_table(path, "levels")["kept"].to_list() == [True, False, True]
    assert torch.load(path / "model.pt", weights_only=False)["backbone"] == "xsimgcl"

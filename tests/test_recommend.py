"""The `recommendations` table: top-N per user from the ranking the run chose, every item the user rated left out
(recommend.exclude), original ids beside the internal ones, and its top-20 reproduces the test Recall@20 / NDCG@20
of the protocol that masks the same items."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from lagcl.artifacts import read_manifest, read_table
from lagcl.config import load_config
from lagcl.evaluate import UserItems, evaluate, metrics_from_ranked, rank_topk
from lagcl.recommend import PROTOCOL, excluded_items, recommendations
from lagcl.rerank.fusion import CandidateMatrix, fusion_metrics, user_items
from lagcl.measure import PROTOCOLS, split_sets
from lagcl.train_data import build_train_data
from flows import cli
from tasks import evaluate as evaluate_stage
from tasks.base import make_plan

sys.path.insert(0, str(Path(__file__).parent))
from test_rerank_stage import N_ITEMS, N_USERS, dataset, popularity_topk  # noqa: E402


def reported_metrics(rec: pl.DataFrame, inter: pl.DataFrame, users: list[int], k: int = 20) -> dict:
    """Recall@k / NDCG@k of the table's first k rows per user against the test positives."""
    test = user_items(inter, "test", N_USERS, N_ITEMS)
    lists = []
    for u in users:
        items = rec.filter((pl.col("user") == u) & (pl.col("rank") <= k)).sort("rank")["item"].to_list()
        lists.append(items + [N_ITEMS] * (k - len(items)))
    return metrics_from_ranked(torch.tensor(lists), torch.tensor(users), UserItems(test.indptr, test.indices,
                                                                                   N_ITEMS + 1), (k,))


def fake_rerank_scores(cf: pl.DataFrame, k: int, seed: int = 3) -> pl.DataFrame:
    top = cf.filter(pl.col("rank") <= k)
    return top.select("user", "item").with_columns(
        pl.Series("score", np.random.default_rng(seed).normal(size=top.height)))


def rated(inter: pl.DataFrame) -> set[tuple[int, int]]:
    """(user, item) of every training and validation interaction, liked or disliked."""
    return set(inter.filter(pl.col("split").is_in(["train", "valid"])).select("user", "item").rows())


def test_every_user_gets_n_items_without_rated_ones_and_with_original_ids():
    inter, users, items = dataset()
    cf = popularity_topk(inter, 25)
    rec = recommendations(cf, inter, users.with_columns(raw_id=pl.format("U{}", "raw_id")),
                          items.with_columns(raw_id=pl.format("I{}", "raw_id")), n=10)
    assert rec.columns[:4] == ["user", "rank", "item", "score"]
    assert sorted(rec["user"].unique().to_list()) == list(range(N_USERS))
    assert rec.group_by("user").len()["len"].to_list() == [10] * N_USERS
    assert rec["user_raw"].to_list() == [f"U{u}" for u in rec["user"]]
    assert rec["item_raw"].to_list() == [f"I{i}" for i in rec["item"]]
    assert not rated(inter) & set(rec.select("user", "item").rows())
    # without a reranker the list is the CF ranking with the rated items removed
    assert (rec["source"] == "cf").all() and (rec["score"] == rec["cf_score"]).all()
    u0 = rec.filter(pl.col("user") == 0)
    assert u0["cf_rank"].is_sorted() and u0["rank"].to_list() == list(range(1, 11))


def test_fused_users_follow_eq_21_and_reproduce_the_fusion_metrics_exactly():
    inter, users, items = dataset()
    cf = popularity_topk(inter, 25)
    scores = fake_rerank_scores(cf, 5)
    fused_users = list(range(0, N_USERS, 2))
    rec = recommendations(cf, inter, users, items, n=20, rerank_scores=scores, k=5, alpha=0.3, tau=0.5,
                          fused_users=fused_users)
    mat = CandidateMatrix.build(cf, scores, 5, fused_users)
    # every item the user rated left out: the 'dislikes masked' protocol, as the table's default
    expected = fusion_metrics(mat, 0.3, 0.5, user_items(inter, "test", N_USERS, N_ITEMS),
                              excluded_items(inter, "rated", N_USERS, N_ITEMS), [20])
    got = reported_metrics(rec, inter, fused_users)
    assert got[("recall", 20)] == expected[("recall", 20)] and got[("ndcg", 20)] == expected[("ndcg", 20)]
    fused = rec.filter(pl.col("user").is_in(fused_users))
    assert set(fused.filter(pl.col("source") == "rerank")["cf_rank"].to_list()) <= set(range(1, 6))
    # the reranked head is ordered by s_final (eq. 21), which sums to at most 1 over C_u
    head = fused.filter((pl.col("user") == 0) & (pl.col("source") == "rerank"))
    assert head["score"].is_sorted(descending=True) and head["score"].sum() <= 1.0 + 1e-9
    assert (rec.filter(~pl.col("user").is_in(fused_users))["source"] == "cf").all()


def test_n_beyond_the_cf_list_gives_what_the_list_holds_without_the_excluded_items():
    inter, users, items = dataset()
    for exclude, known in (("rated", pl.col("split").is_in(["train", "valid"])),
                           ("positives", (pl.col("split") == "valid") & (pl.col("sign") > 0))):
        rec = recommendations(popularity_topk(inter, 12), inter, users, items, n=50, exclude=exclude)
        cf = popularity_topk(inter, 12).join(inter.filter(known).select("user", "item"), on=["user", "item"],
                                             how="anti")
        assert dict(rec.group_by("user").len().iter_rows()) == dict(cf.group_by("user").len().iter_rows())
        assert rec.group_by("user").agg(pl.col("rank").max() == pl.len())["rank"].all()


def one_user_with_a_dislike_the_model_ranks_first():
    """User 0 liked items 0-2 in training, liked item 3 in validation, disliked item 4 in training; item 5 is
    the test positive. The CF list (training positives masked) puts the dislike first, then 3, 5, 6, 7."""
    inter = pl.DataFrame({"user": [0] * 6, "item": [0, 1, 2, 3, 4, 5], "rating": [5.0, 4, 5, 4, 1, 5],
                          "timestamp": list(range(6)), "sign": [1, 1, 1, 1, -1, 1],
                          "split": ["train", "train", "train", "valid", "train", "test"]},
                         schema_overrides={"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8})
    users = pl.DataFrame({"user": [0], "raw_id": ["196"]}, schema_overrides={"user": pl.Int32})
    items = pl.DataFrame({"item": list(range(8)), "raw_id": [f"i{i}" for i in range(8)]},
                         schema_overrides={"item": pl.Int32})
    cf = pl.DataFrame({"user": [0] * 5, "item": [4, 3, 5, 6, 7], "score": [9.0, 8, 7, 6, 5], "rank": [1, 2, 3, 4, 5]},
                      schema_overrides={"user": pl.Int32, "item": pl.Int32, "rank": pl.Int32})
    return inter, users, items, cf


def test_a_training_dislike_the_model_ranks_first_is_not_recommended_by_default():
    inter, users, items, cf = one_user_with_a_dislike_the_model_ranks_first()
    rec = recommendations(cf, inter, users, items, n=3)
    assert load_config().recommend.exclude == "rated"
    assert rec["item"].to_list() == [5, 6, 7] and rec["rank"].to_list() == [1, 2, 3]
    assert rec["cf_rank"].to_list() == [3, 4, 5]


def test_with_exclude_positives_the_dislike_comes_back_and_only_liked_items_are_left_out():
    inter, users, items, cf = one_user_with_a_dislike_the_model_ranks_first()
    rec = recommendations(cf, inter, users, items, n=3, exclude="positives")
    assert rec["item"].to_list() == [4, 5, 6]
    assert rec.row(0, named=True)["item_raw"] == "i4" and rec.row(0, named=True)["cf_rank"] == 1


def test_each_setting_names_the_test_protocol_that_masks_the_same_items():
    inter, _, _, _ = one_user_with_a_dislike_the_model_ranks_first()
    data = build_train_data(inter, 1, 8)
    for exclude, protocol in PROTOCOL.items():
        _, masked = split_sets(data, "test", PROTOCOLS[protocol])
        assert excluded_items(inter, exclude, 1, 8).dense(torch.tensor([0])).tolist() == \
            masked.dense(torch.tensor([0])).tolist()
    assert excluded_items(inter, "rated", 1, 8).indices.tolist() == [0, 1, 2, 3, 4]
    assert excluded_items(inter, "positives", 1, 8).indices.tolist() == [0, 1, 2, 3]


def test_the_tables_top_20_gives_the_test_metrics_of_the_protocol_its_setting_names():
    inter, users, items = dataset()
    data = build_train_data(inter, N_USERS, N_ITEMS)
    scores = torch.from_numpy(np.random.default_rng(5).normal(size=(N_USERS, N_ITEMS))).float()
    neg = inter.filter(pl.col("sign") < 0)
    scores[torch.tensor(neg["user"].to_list()), torch.tensor(neg["item"].to_list())] += 2.0  # a model that likes what the users disliked
    every = torch.arange(N_USERS)
    top, top_scores = rank_topk(lambda u: scores[u], every, N_ITEMS - 6, data.train_pos)  # 6 training positives each
    cf = pl.DataFrame({"user": every.repeat_interleave(top.shape[1]).numpy(), "item": top.flatten().numpy(),
                       "score": top_scores.flatten().double().numpy(),
                       "rank": torch.arange(1, top.shape[1] + 1).repeat(N_USERS).numpy()},
                      schema_overrides={"user": pl.Int32, "item": pl.Int32, "rank": pl.Int32})
    got = {}
    for exclude, protocol in PROTOCOL.items():
        rec = recommendations(cf, inter, users, items, n=20, exclude=exclude)
        _, masked = split_sets(data, "test", PROTOCOLS[protocol])
        expected = evaluate(lambda u: scores[u], data.test, masked, (20,))
        got[exclude] = reported_metrics(rec, inter, list(range(N_USERS)))
        assert got[exclude] == pytest.approx(expected, abs=1e-12)
    assert got["rated"][("recall", 20)] > got["positives"][("recall", 20)]  # the dislikes took test slots


def finished_run(tmp_path, *extra: str):
    """prepare, profiles and gcl folders written here (popularity as the CF model), then the real evaluate stage."""
    cfg = load_config(overrides=[f"cache_dir={tmp_path / 'cache'}", "recommend.n=20", *[
        f"pipeline.stages.{s}=false" for s in ("augment", "groups", "rerank")], *extra])
    plan = make_plan(cfg)
    inter, users, items = dataset()
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users.with_columns(raw_id=pl.format("U{}", "raw_id"))),
                         ("items", items)):
            sd.write_table(name, df)
        sd.finish({})
    with plan.store.stage("profiles", plan.fingerprints["profiles"]) as sd:
        sd.write_table("user_profiles", pl.DataFrame({"user": [3], "summarization": ["likes quiet dramas"],
                                                      "reasoning": ["rated every drama 5"]}))
        sd.write_table("item_profiles", pl.DataFrame({"item": list(range(N_ITEMS)), "summarization": [""] * N_ITEMS,
                                                      "reasoning": [f"why item {i}" for i in range(N_ITEMS)]}))
        sd.finish({})
    with plan.store.stage("gcl", plan.fingerprints["gcl"]) as sd:
        sd.write_table("cf_topk", popularity_topk(inter, 25))
        sd.finish({"backbone": "popularity", "rank_level": False, "variant": "control"})
    return plan, inter, Path(evaluate_stage.run(plan).path)


def test_the_evaluate_stage_leaves_recommendations_whose_top_20_gives_the_metrics_of_its_protocol(tmp_path):
    plan, inter, ev = finished_run(tmp_path)
    meta = read_manifest(ev)["meta"]
    rec = read_table(ev, "recommendations")
    assert not rated(inter) & set(rec.select("user", "item").rows())
    table = meta["recommendations"]
    assert {k: table[k] for k in ("n", "users", "rows", "ranking", "exclude", "protocol")} == {
        "n": 20, "users": N_USERS, "rows": rec.height, "ranking": "cf", "exclude": "rated",
        "protocol": "dislikes masked"}
    assert meta["fingerprints"] == plan.fingerprints
    got = reported_metrics(rec, inter, list(range(N_USERS)))
    assert got[("recall", 20)] == table["test_recall@20"] and got[("ndcg", 20)] == table["test_ndcg@20"]
    assert table["test_recall@20"] > meta["test_recall@20"]  # the 'all' headline ranks the dislikes too
    assert "recommend.exclude = rated) leaves out every item the user rated" in (ev / "report.md").read_text()


def test_with_exclude_positives_the_table_gives_the_headline_metrics_of_the_all_protocol(tmp_path):
    plan, inter, ev = finished_run(tmp_path, "recommend.exclude=positives")
    meta = read_manifest(ev)["meta"]
    rec = read_table(ev, "recommendations")
    assert (meta["recommendations"]["exclude"], meta["recommendations"]["protocol"]) == ("positives", "all")
    assert rec.height == 20 * N_USERS
    got = reported_metrics(rec, inter, list(range(N_USERS)))
    assert got[("recall", 20)] == meta["test_recall@20"] == meta["recommendations"]["test_recall@20"]
    assert got[("ndcg", 20)] == meta["test_ndcg@20"] == meta["recommendations"]["test_ndcg@20"]
    disliked = set(inter.filter(pl.col("sign") < 0).select("user", "item").rows())
    assert disliked & set(rec.select("user", "item").rows())


def test_changing_recommend_exclude_recomputes_the_evaluate_stage_only():
    rated_plan = make_plan(load_config(overrides=["recommend.exclude=rated"]))
    positives_plan = make_plan(load_config(overrides=["recommend.exclude=positives"]))
    changed = {s for s, fp in rated_plan.fingerprints.items() if positives_plan.fingerprints[s] != fp}
    assert changed == {"evaluate"}


def test_lagcl_recommend_prints_the_profile_and_the_top_n_with_titles_and_levels(tmp_path, capsys):
    _, _, ev = finished_run(tmp_path)
    rec = read_table(ev, "recommendations").filter(pl.col("user") == 3).sort("rank")
    sets = ["--set", f"cache_dir={tmp_path / 'cache'}", "--set", "recommend.n=20"] + [
        x for s in ("augment", "groups", "rerank") for x in ("--set", f"pipeline.stages.{s}=false")]
    assert cli.main(["recommend", "--user", "U3", "--n", "3", *sets]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("user U3 (internal 3): age 30, gender F, occupation writer")
    assert "  profile: likes quiet dramas" in out and "  profile reasoning: rated every drama 5" in out
    assert "top 3 (cf; CF model: popularity 'control'; every item rated in training or validation left out):" in out
    first = rec.row(0, named=True)
    line = next(x for x in out if x.startswith("    1. "))
    assert line == (f"    1. movie {first['item']} [{first['item_raw']}] score {first['score']:.4f}; placed by CF "
                    f"model 'control' rank {first['cf_rank']}")
    assert f"       item profile reasoning: why item {first['item']}" in out
    assert sum(x.startswith(("    1. ", "    2. ", "    3. ", "    4. ")) for x in out) == 3

    assert cli.main(["recommend", "--user", "nobody", *sets]) == 2
    assert "user 'nobody' is not in this run's data" in capsys.readouterr().err

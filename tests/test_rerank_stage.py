"""The rerank and evaluate stages end to end on a small dataset built here, with a tiny local Qwen2 reranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from lagcl.artifacts import read_manifest, read_table
from lagcl.config import load_config
from lagcl.evaluate import metrics_from_ranked
from lagcl.rerank.fusion import user_items
from tasks import evaluate as evaluate_stage
from tasks import rerank as rerank_stage
from tasks.base import make_plan

from test_rerank_train import tiny_qwen2

N_USERS, N_ITEMS, K = 16, 30, 5


def dataset(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        items = rng.permutation(N_ITEMS)[:14]
        for j, i in enumerate(items):
            split = "train" if j < 8 else ("valid" if j < 11 else "test")
            rating = 5.0 if j % 4 else 2.0
            if rating <= 3:
                split = "train"                      # negatives are never evaluation targets
            rows.append({"user": u, "item": int(i), "rating": rating, "timestamp": 1000 + j,
                         "sign": 1 if rating > 3 else -1, "split": split})
    inter = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64,
                                       "timestamp": pl.Int64, "sign": pl.Int8, "split": pl.String})
    users = pl.DataFrame({"user": list(range(N_USERS)), "raw_id": [str(u) for u in range(N_USERS)],
                          "age": ["30"] * N_USERS, "gender": ["F"] * N_USERS, "occupation": ["writer"] * N_USERS,
                          "zip_code": ["0"] * N_USERS}, schema_overrides={"user": pl.Int32})
    items = pl.DataFrame({"item": list(range(N_ITEMS)), "raw_id": [str(i) for i in range(N_ITEMS)],
                          "title": [f"movie {i}" for i in range(N_ITEMS)],
                          "categories": [["drama"] if i % 2 else ["comedy"] for i in range(N_ITEMS)],
                          "year": ["1990"] * N_ITEMS}, schema_overrides={"item": pl.Int32})
    return inter, users, items


def popularity_topk(inter: pl.DataFrame, topk: int) -> pl.DataFrame:
    """A stand-in for the gcl stage's cf_topk: item popularity, training positives masked."""
    pop = np.bincount(inter.filter(pl.col("sign") > 0)["item"].to_numpy(), minlength=N_ITEMS).astype(float)
    pop += np.linspace(0, 0.01, N_ITEMS)              # no ties
    rows = []
    train_pos = inter.filter((pl.col("split") == "train") & (pl.col("sign") > 0))
    for u in range(N_USERS):
        seen = set(train_pos.filter(pl.col("user") == u)["item"].to_list())
        order = [i for i in np.argsort(-pop) if i not in seen][:topk]
        rows += [{"user": u, "item": int(i), "score": float(pop[i]), "rank": r + 1} for r, i in enumerate(order)]
    return pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "score": pl.Float64, "rank": pl.Int32})


@pytest.fixture()
def plan(tmp_path):
    model, tokenizer = tiny_qwen2()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    cfg = load_config(overrides=[
        f"cache_dir={tmp_path / 'cache'}", "rerank.model=reranker-cpu-cross", f"rerank.spec.path={tmp_path / 'tiny'}",
        "rerank.spec.max_length=64",
        "rerank.spec.batch_size=8", "rerank.spec.lr=0.005", f"rerank.candidates={K}", "rerank.holdout_users=0.25",
        "rerank.neg_per_pos=2", "fusion.alpha_grid=[0.0,0.5,1.0]", "fusion.tau_grid=[1.0]",
        "pipeline.stages.profiles=false", "pipeline.stages.augment=false", "pipeline.stages.groups=false"])
    return with_upstream(cfg)


def with_upstream(cfg):
    """A plan whose prepare and gcl stages hold the dataset above and its popularity top-12."""
    p = make_plan(cfg)
    inter, users, items = dataset()
    with p.store.stage("prepare", p.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users), ("items", items)):
            sd.write_table(name, df)
        sd.finish({})
    with p.store.stage("gcl", p.fingerprints["gcl"]) as sd:
        sd.write_table("cf_topk", popularity_topk(inter, 12))
        sd.finish({"backbone": "popularity", "rank_level": False})
    return p


def test_rerank_then_evaluate_reports_cf_and_fused_side_by_side(plan):
    rr = Path(rerank_stage.run(plan).path)
    scores = read_table(rr, "rerank_scores")
    assert scores.height == N_USERS * K and scores["score"].is_finite().all()
    meta = read_manifest(rr)["meta"]
    assert meta["trained"] and meta["holdout_users"] == 4 and meta["profiles"].startswith("metadata")

    inter = read_table(Path(plan.ref("prepare").path), "interactions")
    train = read_table(rr, "rerank_train")
    roles = read_table(rr, "rerank_users")
    # training pairs come from training users only, labelled by validation positives, never by test ones
    assert set(train["user"].to_list()) <= set(roles.filter(pl.col("role") == "train")["user"].to_list())
    valid_pos = set(inter.filter((pl.col("split") == "valid") & (pl.col("sign") > 0)).select("user", "item").rows())
    test_pos = set(inter.filter(pl.col("split") == "test").select("user", "item").rows())
    labelled = set(train.filter(pl.col("label") == 1).select("user", "item").rows())
    assert labelled and labelled <= valid_pos and not labelled & test_pos

    ev = Path(evaluate_stage.run(plan).path)
    m = read_table(ev, "metrics")
    assert set(m["variant"].unique()) == {"cf", "cf+rerank", "cf+rerank (tuned)", "rerank only"}
    assert set(m["k"].unique()) == {10, 20, 50} and set(m["split"].unique()) == {"valid", "test"}
    # the CF row equals an all-rank evaluation of the CF list itself (training and validation items excluded)
    cf = popularity_topk(inter, 12)
    valid, test = user_items(inter, "valid", N_USERS, N_ITEMS), user_items(inter, "test", N_USERS, N_ITEMS)
    ranked = []
    for u in range(N_USERS):
        lst = [i for i in cf.filter(pl.col("user") == u)["item"].to_list() if not valid.dense(torch.tensor([u]))[0, i]]
        ranked.append((lst + [N_ITEMS] * 12)[:10])
    from lagcl.evaluate import UserItems
    expected = metrics_from_ranked(torch.tensor(ranked), torch.arange(N_USERS),
                                   UserItems(test.indptr, test.indices, N_ITEMS + 1), (10,))
    got = m.filter((pl.col("variant") == "cf") & (pl.col("split") == "test") & (pl.col("k") == 10))
    assert dict(zip(got["metric"], got["value"])) == pytest.approx({"recall": expected[("recall", 10)],
                                                                    "ndcg": expected[("ndcg", 10)]})
    em = read_manifest(ev)["meta"]
    # the tuned fusion is the headline only when it beats CF on the held-out users' validation NDCG@20, above
    # the noise (the paired test's p is in the reason; 4 held-out users cannot clear p < 0.05)
    valid = m.filter((pl.col("split") == "valid") & (pl.col("metric") == "ndcg") & (pl.col("k") == 20))
    tuned, cf_valid = (valid.filter(pl.col("variant") == v)["value"][0] for v in ("cf+rerank (tuned)", "cf"))
    step = em["levels"][-1]
    assert step["level"] == "rerank" and step["variant"] == "cf+rerank (tuned)" and step["trained"]
    assert "p=" in step["reason"]
    assert em["headline_variant"] == "cf" and not step["kept"] and "reranker left out" in step["reason"]
    if tuned > cf_valid:
        assert "with p < 0.05" in step["reason"]
    assert read_table(ev, "grid").height == 3
    report = (ev / "report.md").read_text()
    # the reranker was left out: the headline is the CF fallback, and the report says so beside the grid's choice
    assert "| **cf** (headline, fallback) | 1.00 | - |" in report and "metrics.png" in report
    assert em["fusion"]["fallback"].startswith("CF alone") and em["fusion"]["chosen_by"].startswith("grid search")
    assert f"alpha = {em['fusion']['alpha']:g}, tau = {em['fusion']['tau']:g}, chosen by the grid search" in report
    assert em["cannot_move"] == [f"recall@{n}" for n in (10, 20, 50) if n >= K]
    assert (ev / "metrics.png").stat().st_size > 1000 and (ev / "grid.png").is_file()
    assert (ev / "chain.png").stat().st_size > 1000 and "![chain.png](chain.png)" in report
    assert json.loads((rr / "reranker" / "model" / "done.json").read_text())["pairs"] == train.height
    # the run's product: recommendations from the ranking it chose, every rated item left out, whose top-20
    # gives exactly the headline under the protocol that masks the same items ('dislikes masked')
    rec = read_table(ev, "recommendations")
    table = em["recommendations"]
    assert (table["exclude"], table["protocol"]) == ("rated", "dislikes masked")
    assert sorted(rec["user"].unique().to_list()) == list(range(N_USERS))
    assert set(rec["source"].unique()) == ({"cf", "rerank"} if em["rerank_level"] else {"cf"})
    lists = [(rec.filter(pl.col("user") == u).sort("rank")["item"].to_list() + [N_ITEMS] * 20)[:20]
             for u in range(N_USERS)]
    got = metrics_from_ranked(torch.tensor(lists), torch.arange(N_USERS),
                              UserItems(test.indptr, test.indices, N_ITEMS + 1), (20,))
    assert got == {("recall", 20): table["test_recall@20"], ("ndcg", 20): table["test_ndcg@20"]}

    # other fusion settings are the evaluate stage's alone: the same rerank folder, its reranker and scores as they
    # are (nothing retrained), another evaluate folder
    plan.cfg.fusion.alpha = 0.2
    again = make_plan(plan.cfg)
    assert again.fingerprints["rerank"] == plan.fingerprints["rerank"]
    assert again.fingerprints["evaluate"] != plan.fingerprints["evaluate"]
    rr2 = Path(rerank_stage.run(again).path)
    assert rr2 == rr and read_manifest(rr2) == read_manifest(rr)
    assert read_table(rr2, "rerank_scores").equals(scores)


def test_the_late_interaction_reranker_encodes_each_text_once_and_scores_every_candidate(tmp_path):
    """The CPU default (reranker-cpu, spec.style=late, the packaged all-MiniLM-L6-v2): users + items texts
    encoded, not users x |C_u| prompts; the evaluate stage fuses its scores like any reranker's."""
    cfg = load_config(overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"rerank.candidates={K}", "rerank.holdout_users=0.25",
        "rerank.neg_per_pos=2", "fusion.alpha_grid=[0.0,0.5,1.0]", "fusion.tau_grid=[1.0]", "rerank.spec.device=cpu",
        "rerank.spec.head_epochs=3", "pipeline.stages.profiles=false", "pipeline.stages.augment=false",
        "pipeline.stages.groups=false"])
    assert cfg.rerank.model == "reranker-cpu" and cfg.rerank.spec.style == "late"
    p = with_upstream(cfg)
    rr = Path(rerank_stage.run(p).path)
    meta = read_manifest(rr)["meta"]
    scores = read_table(rr, "rerank_scores")
    assert scores.height == N_USERS * K and scores["score"].is_finite().all()
    inter = read_table(Path(p.ref("prepare").path), "interactions")
    cands = set(popularity_topk(inter, K)["item"].to_list())
    history = set(inter.filter(pl.col("split") == "train")["item"].to_list())
    assert meta["style"] == "late" and meta["device"] == "cpu"
    assert meta["texts_encoded"] == N_USERS + len(cands | history)
    train = read_table(rr, "rerank_train")
    assert "text" not in train.columns and set(train["label"].unique().to_list()) == {0.0, 1.0}
    assert json.loads((rr / "reranker" / "model" / "done.json").read_text())["pairs"] == train.height
    ev = Path(evaluate_stage.run(p).path)
    assert {"cf", "cf+rerank (tuned)"} <= set(read_table(ev, "metrics")["variant"].unique())


def test_a_zero_candidate_set_evaluates_the_cf_model_alone(plan):
    plan.cfg.rerank.candidates = 0
    plan = make_plan(plan.cfg)
    rr = Path(rerank_stage.run(plan).path)
    assert read_table(rr, "rerank_scores").height == 0
    ev = Path(evaluate_stage.run(plan).path)
    assert set(read_table(ev, "metrics")["variant"].unique()) == {"cf"}


def test_the_gpu_reranker_prints_its_deepspeed_launch_and_resumes_after_it(plan, tmp_path, capsys):
    """reranker-qwen7b (LoRA + ZeRO-2, launcher=deepspeed): the stage writes a job, prints the command and
    stops; the job (run here in-process, single CPU process) trains; the rerun scores with its model."""
    from lagcl.errors import LagclError
    from lagcl.rerank.train import run_job

    cfg = load_config(overrides=[
        f"cache_dir={plan.cfg.cache_dir}", "rerank.model=reranker-qwen7b", f"rerank.spec.path={tmp_path / 'tiny'}",
        "rerank.spec.max_length=128", "rerank.spec.bf16=false", "rerank.spec.gradient_checkpointing=false",
        "rerank.spec.batch_size=8", "rerank.spec.grad_accum=1", f"rerank.candidates={K}",
        "pipeline.stages.profiles=false", "pipeline.stages.augment=false", "pipeline.stages.groups=false"])
    assert cfg.rerank.deepspeed == "zero2" and cfg.rerank.spec.lora is not None and cfg.rerank.spec.format == "cot"
    p = make_plan(cfg)
    with pytest.raises(LagclError, match="trains outside the pipeline"):
        rerank_stage.run(p)
    job = Path(p.ref("rerank").path) / "train_job.json"
    assert f"deepspeed --num_gpus 8 --module lagcl.rerank.train {job}" in capsys.readouterr().out
    assert "[TRAINING PHASE ONLY]" in read_table_unchecked(Path(p.ref("rerank").path), "rerank_train")["text"][0]
    res = run_job(job)
    assert res.global_step > 0 and (res.model_dir / "adapter_config.json").is_file()
    rr = Path(rerank_stage.run(p).path)
    meta = read_manifest(rr)["meta"]
    assert meta["lora"] and meta["deepspeed"] == "zero2" and read_table(rr, "rerank_scores").height == N_USERS * K


def read_table_unchecked(stage_dir: Path, name: str) -> pl.DataFrame:
    """A table of a stage that has not finished yet (no manifest): read the Parquet file directly."""
    return pl.read_parquet(stage_dir / f"{name}.parquet")


def test_a_reranker_made_by_an_older_version_of_the_stage_code_is_never_reused(monkeypatch, tmp_path):
    from dataclasses import replace

    from tasks import base

    cfg = load_config(overrides=[f"cache_dir={tmp_path}"])
    fp = make_plan(cfg).fingerprints["rerank"]
    monkeypatch.setitem(base.STAGES, "rerank", replace(base.STAGES["rerank"], version="older"))
    assert make_plan(cfg).fingerprints["rerank"] != fp

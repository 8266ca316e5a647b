"""`make table2/table3` (flows/tables.py): several training seeds, each (backbone, seed) an ordinary cached
configuration; the table reports seed mean, spread and the paired tests against the control."""

import csv

import numpy as np
import polars as pl

from flows.tables import build_table, table_rows
from lagcl.config import load_config
from tasks.base import make_plan
from test_gate import clustered_tables

TINY = ["gcl.epochs=3", "gcl.emb_dim=8", "gcl.topk_out=10", "rank.groups_from=categories",
        "pipeline.stages.profiles=false", "pipeline.stages.augment=false", "pipeline.stages.groups=false"]


def _prepared(tmp_path):
    """The prepare stage of the tiny configuration, written from a small clustered dataset."""
    cfg = load_config(model="lightgcn", overrides=[f"cache_dir={tmp_path}", *TINY])
    plan = make_plan(cfg)
    inter, users, items = clustered_tables(n_users=40, n_items=120)
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users), ("items", items)):
            sd.write_table(name, df)
        sd.finish({})
    return cfg


def test_table2_over_two_seeds_trains_each_seed_once_and_a_rerun_is_all_cached(tmp_path, capsys):
    cfg = _prepared(tmp_path)
    overrides = [f"cache_dir={tmp_path}", *TINY]
    text, out_dir = build_table(2, cfg.data.name, "embedding", ["lightgcn"], 2, overrides, resamples=500)
    assert "| lightgcn | base | control |" in text and "| lightgcn | + levels (data + rank) | rank |" in text
    controls = list((tmp_path / cfg.data.name / "control").glob("*/manifest.json"))
    assert len(controls) == 2  # one control per training seed, the split shared
    assert len(list((tmp_path / cfg.data.name / "prepare").glob("*/manifest.json"))) == 1
    rows = list(csv.DictReader(open(out_dir / "table2-lightgcn-2seeds.csv")))
    assert [r["row"] for r in rows] == ["base", "+ levels (data + rank)"]
    assert rows[0]["seeds"] == "2" and float(rows[0]["recall@20_std"]) >= 0
    assert 0 < float(rows[1]["recall@20_p_users"]) <= 1 and 0 <= float(rows[1]["recall@20_p_seeds"]) <= 1
    assert (out_dir / "table2-lightgcn-2seeds.png").stat().st_size > 0
    capsys.readouterr()
    build_table(2, cfg.data.name, "embedding", ["lightgcn"], 2, overrides, resamples=500)
    assert "all cached" in capsys.readouterr().out


def test_table_rows_give_the_control_no_test_and_a_variant_its_difference_over_seeds():
    rng = np.random.default_rng(0)
    users = np.arange(200)
    control = [pl.DataFrame({"user": users, "recall": rng.random(200), "ndcg": rng.random(200)}) for _ in range(3)]
    better = [c.with_columns(pl.col("recall") + 0.05, pl.col("ndcg") + 0.02) for c in control]
    rows = table_rows({"control": control, "+ x": better}, {"control": "control", "+ x": "x"}, resamples=500)
    assert "recall@20_diff" not in rows[0]
    assert abs(rows[1]["recall@20_diff"] - 0.05) < 1e-12 and abs(rows[1]["ndcg@20_diff"] - 0.02) < 1e-12
    assert rows[1]["recall@20_p_users"] < 0.01 and rows[1]["recall@20_mark"] == "**"
    assert rows[1]["seeds"] == 3


def test_compare_prints_the_p_value_and_the_mark_beside_each_gain():
    from flows.summary import format_comparison

    common = {"backbone": "lightgcn", "engine": "embedding", "settings": "", "control": 0.30, "rerank": "-",
              "runs": 1, "folder": "gcl/a"}
    rows = [{**common, "levels": "none", "tried": [], "data": "-", "rank": "-", "recall@20": 0.30, "ndcg@20": 0.25,
             "vs_control": 0.0, "p": None},
            {**common, "levels": "data", "tried": ["data"], "data": "kept +10.0%**", "rank": "-", "recall@20": 0.33,
             "ndcg@20": 0.27, "vs_control": 0.1, "p": 0.004}]
    lines = format_comparison(rows, "toy").splitlines()
    assert "+10.0%**" in lines[3] and "0.004" in lines[3]
    assert "+0.0%" in lines[2] and lines[2].split()[-3] == "-"

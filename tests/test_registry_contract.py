"""The stage registry (tasks/stages.py) as an executable contract: a stage body can read only the upstream tables
its entry declares (`Plan.input` refuses the others), cannot finish without the tables it declares
(`StageDir.finish`), and a real run of every stage reads and writes exactly what the registry says."""

from __future__ import annotations

import json

import polars as pl
import pytest

from lagcl.artifacts import StageDir, read_manifest
from lagcl.config import load_config
from lagcl.errors import ContractError
from tasks.base import STAGES, make_plan
from test_flow import run_pipeline


def test_a_stage_body_reading_a_table_its_entry_does_not_declare_is_refused_before_anything_is_read(tmp_path):
    plan = make_plan(load_config(overrides=[f"cache_dir={tmp_path}"]))
    with pytest.raises(ContractError, match=r"the rerank stage reads gcl.metrics, which its registry entry does not "
                                            r"declare \(tasks/stages.py reads\['gcl'\] = \('cf_topk',\)\)"):
        plan.for_stage("rerank").input("gcl", "metrics")
    # outside a stage (status, scripts) nothing is held to a stage's entry
    assert plan.input("gcl", "metrics", optional=True) is None


def test_a_stage_finishing_without_a_declared_table_is_refused_and_its_folder_stays_unfinished(tmp_path):
    sd = StageDir(tmp_path / "evaluate" / "f", "evaluate", "f", writes=("metrics", "recommendations"))
    with sd:
        sd.write_table("metrics", pl.DataFrame({"x": [1]}))
        with pytest.raises(ContractError, match=r"the evaluate stage finished without its declared table\(s\) "
                                                r"\['recommendations'\]"):
            sd.finish({})
    assert read_manifest(sd.path) is None


def test_a_table_written_in_shards_only_counts_as_written(tmp_path):
    sd = StageDir(tmp_path / "augment" / "f", "augment", "f", writes=("scores",))
    with sd:
        sd.write_shard("scores", pl.DataFrame({"x": [1]}))
        assert sd.finish({})["rows"] == {"shards/scores/scores-000000.parquet": 1}


def test_every_declared_read_is_a_table_its_upstream_declares_it_writes():
    for name, spec in STAGES.items():
        for up, tables in spec.reads.items():
            assert set(tables) <= {*STAGES[up].writes, *STAGES[up].may_write}, (name, up)


def test_a_real_run_of_every_stage_reads_and_writes_what_the_registry_declares(repo_root, tmp_path):
    from lagcl.data.fetch import ensure_ml100k

    ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")
    every_stage_on = [f"pipeline.stages.{s}=true" for s in STAGES if s != "prepare"]
    done = run_pipeline(repo_root, tmp_path, *every_stage_on, "gcl.epochs=2", "rerank.max_users=200")
    assert done.returncode == 0, done.stderr[-3000:]
    for name, spec in STAGES.items():
        manifests = list((tmp_path / "cache" / "ml-100k" / name).glob("*/manifest.json"))
        assert len(manifests) == 1, name
        manifest = json.loads(manifests[0].read_text())
        # the lineage the template records: every declared upstream table, and only those, was read
        assert {u: set(t) for u, t in manifest.get("read", {}).items()} == {u: set(t) for u, t in spec.reads.items()}
        files = manifest["files"]
        tables = {f.removesuffix(".parquet") for f in files if "/" not in f and f.endswith(".parquet")}
        in_shards = {f.split("/")[1] for f in files if f.startswith("shards/")}
        assert set(spec.writes) <= tables | in_shards, name
        assert tables <= {*spec.writes, *spec.may_write}, name

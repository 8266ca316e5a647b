import json
import os
import subprocess
import sys

import polars as pl
import pytest

from lagcl.artifacts import ArtifactStore, fingerprint, is_complete, read_table
from lagcl.errors import ArtifactError, StageLockedError


def test_fingerprint_depends_on_stage_config_upstream_and_code_version():
    base = fingerprint("gcl", "cfg", {"prepare": "a"}, "1")
    assert base == fingerprint("gcl", "cfg", {"prepare": "a"}, "1")
    assert base != fingerprint("augment", "cfg", {"prepare": "a"}, "1")
    assert base != fingerprint("gcl", "cfg2", {"prepare": "a"}, "1")
    assert base != fingerprint("gcl", "cfg", {"prepare": "b"}, "1")
    assert base != fingerprint("gcl", "cfg", {"prepare": "a"}, "2")


def test_manifest_round_trip_records_rows_checksums_and_meta(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    df = pl.DataFrame({"user": [0, 1, 2], "item": [5, 6, 7]})
    with store.stage("prepare", "fp1") as sd:
        assert not sd.complete
        sd.write_table("interactions", df)
        manifest = sd.finish({"stats": {"users": 3}})
    assert store.is_complete("prepare", "fp1")
    assert manifest["rows"] == {"interactions.parquet": 3}
    assert store.manifest("prepare", "fp1")["meta"] == {"stats": {"users": 3}}
    assert store.read_table("prepare", "fp1", "interactions").equals(df)


def test_folders_finished_one_after_the_other_are_ordered_by_their_finish_time_even_within_a_second(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    stamps = []
    for fp in ("b", "a", "c"):  # folder names sort otherwise than the order they finish in
        with store.stage("groups", fp) as sd:
            sd.write_table("members", pl.DataFrame({"a": [1]}))
            stamps.append(sd.finish({})["finished_at"])
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


def test_a_folder_without_manifest_is_incomplete_and_cannot_be_read(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    with store.stage("prepare", "fp1") as sd:
        sd.write_table("interactions", pl.DataFrame({"a": [1]}))
    assert not store.is_complete("prepare", "fp1")
    with pytest.raises(ArtifactError, match="did not finish"):
        store.read_table("prepare", "fp1", "interactions")


def test_a_corrupted_table_fails_its_checksum(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    with store.stage("prepare", "fp1") as sd:
        path = sd.write_table("interactions", pl.DataFrame({"a": list(range(100))}))
        sd.finish()
    with open(path, "r+b") as fh:
        fh.seek(20)
        fh.write(b"garbage")
    assert not is_complete(path.parent)
    with pytest.raises(ArtifactError, match="checksum"):
        read_table(path.parent, "interactions")


def test_shards_append_in_order_and_survive_reopening(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    with store.stage("augment", "fp") as sd:
        sd.write_shard("scores", pl.DataFrame({"x": [1, 2]}))
        sd.write_shard("scores", pl.DataFrame({"x": [3]}))
    with store.stage("augment", "fp") as sd:
        assert [p.name for p in sd.shards("scores")] == ["scores-000000.parquet", "scores-000001.parquet"]
        assert sd.read_shards("scores")["x"].to_list() == [1, 2, 3]


def test_killed_writer_leaves_no_manifest_and_reopening_removes_its_temp_files(tmp_path):
    code = f"""
import os, polars as pl
from lagcl.artifacts import ArtifactStore
store = ArtifactStore({str(tmp_path)!r}, "toy")
sd = store.stage("prepare", "fp").__enter__()
sd.write_table("done", pl.DataFrame({{"a": [1]}}))
open(sd.path / ".half.parquet.tmp-1", "wb").write(b"partial")
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    store = ArtifactStore(tmp_path, "toy")
    assert not store.is_complete("prepare", "fp")
    with store.stage("prepare", "fp") as sd:
        assert not (sd.path / ".half.parquet.tmp-1").exists()
        assert (sd.path / "done.parquet").exists()


def test_second_writer_of_the_same_stage_is_refused_with_a_clear_message(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    with store.stage("gcl", "fp"):
        with pytest.raises(StageLockedError, match="another run") as refused:
            with store.stage("gcl", "fp"):
                pass
    # the message names the holder (this process) and what to do
    assert f"process {os.getpid()} on {os.uname().nodename}" in str(refused.value)
    assert "run the same command again" in str(refused.value)
    with store.stage("gcl", "fp"):  # released after the first writer leaves
        pass


def test_manifest_is_valid_json_written_last(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    with store.stage("prepare", "fp") as sd:
        sd.write_table("t", pl.DataFrame({"a": [1]}))
        sd.finish()
        names = sorted(os.listdir(sd.path))
    assert "manifest.json" in names
    m = json.loads((tmp_path / "toy" / "prepare" / "fp" / "manifest.json").read_text())
    assert set(m["files"]) == {"t.parquet"}

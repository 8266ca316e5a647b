"""The raw data is part of the prepare fingerprint: new or changed files recompute prepare and what follows,
unchanged files keep every stage's fingerprint, and the folder they sit in does not matter (issue 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lagcl.artifacts import read_manifest
from lagcl.config import load_config
from lagcl.data.digest import INDEX, DigestIndex, raw_inputs
from lagcl.errors import DataError
from tasks import prepare as prepare_stage
from tasks.base import make_plan


def write_ratings(folder: Path, n_users: int = 40, n_items: int = 30, seed: int = 0) -> None:
    """A dense random ratings table (every user and item survives the 5-core) and a small items table."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id,item_id,rating,timestamp"]
    for u in range(n_users):
        for i in rng.choice(n_items, 20, replace=False):
            rows.append(f"u{u},i{i},{int(rng.integers(1, 6))},{int(rng.integers(0, 10**9))}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title,genres\n" + "".join(f"i{i},Item {i},Drama\n"
                                                                         for i in range(n_items)))


def config(tmp_path: Path, raw: Path):
    return load_config(data="my-csv", overrides=[f"cache_dir={tmp_path / 'cache'}", f"data.path={raw}"])


def test_appending_ratings_changes_prepare_and_every_stage_after_it(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    before = make_plan(config(tmp_path, raw)).fingerprints
    assert make_plan(config(tmp_path, raw)).fingerprints == before  # unchanged files: the same stages

    with open(raw / "ratings.csv", "a") as fh:
        fh.write("u0,i29,5,1000000001\nu1,i28,4,1000000002\n")
    after = make_plan(config(tmp_path, raw)).fingerprints
    assert set(after) == set(before)
    assert all(after[s] != before[s] for s in before)  # every stage depends on prepare


def test_moving_the_raw_folder_changes_no_fingerprint(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    before = make_plan(config(tmp_path, raw)).fingerprints
    moved = tmp_path / "elsewhere" / "ratings-folder"
    shutil.copytree(raw, moved)
    shutil.rmtree(raw)
    assert make_plan(config(tmp_path, moved)).fingerprints == before


def test_an_unchanged_file_is_not_hashed_again_and_an_edited_one_is(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    cfg = config(tmp_path, raw)
    first = DigestIndex(tmp_path / "cache")
    files = {role: first.file(role, raw / name) for role, name in (("interactions", "ratings.csv"),
                                                                     ("items", "items.csv"))}
    first.save()
    assert len(first.hashed) == 2 and (tmp_path / "cache" / INDEX).is_file()

    second = DigestIndex(tmp_path / "cache")
    again = second.file("interactions", raw / "ratings.csv")
    assert second.hashed == [] and again == files["interactions"]

    # the same size and contents but a new mtime: hashed again, same digest
    (raw / "ratings.csv").write_text((raw / "ratings.csv").read_text())
    third = DigestIndex(tmp_path / "cache")
    assert third.file("interactions", raw / "ratings.csv").sha256 == files["interactions"].sha256
    assert len(third.hashed) == 1
    assert raw_inputs(cfg.data, raw, tmp_path / "cache")["interactions"].rows == 40 * 20 + 1  # header + rows


def test_a_missing_required_file_keeps_its_role_with_an_empty_digest(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    (raw / "ratings.csv").unlink()
    files = raw_inputs(config(tmp_path, raw).data, raw, tmp_path / "cache")
    assert files["interactions"].sha256 == "" and files["items"].sha256 != ""


def test_the_prepare_manifest_records_each_input_file_digest_size_and_rows(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    plan = make_plan(config(tmp_path, raw))
    ref = prepare_stage.run(plan)
    inputs = read_manifest(Path(ref.path))["meta"]["inputs"]
    assert set(inputs) == {"interactions", "items"}
    ratings = inputs["interactions"]
    assert ratings["file"] == "ratings.csv" and ratings["size"] == (raw / "ratings.csv").stat().st_size
    assert ratings["rows"] == 801 and inputs["items"]["rows"] == 31
    index = json.loads((tmp_path / "cache" / INDEX).read_text())
    assert index[str((raw / "ratings.csv").resolve())]["sha256"] == ratings["sha256"]


def test_a_raw_file_replaced_after_planning_stops_prepare_with_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    plan = make_plan(config(tmp_path, raw))
    write_ratings(raw, seed=1)
    with pytest.raises(DataError, match=r"changed after this run was planned \(\['interactions'\]\)"):
        prepare_stage.run(plan)

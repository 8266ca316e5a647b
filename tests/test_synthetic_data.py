"""scripts/synthetic_data.py: datasets at a given shape, with item text and signed ratings, that the generic
table reader reads."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lagcl.config import load_config
from lagcl.data.readers.table import read_table
from scripts.synthetic_data import SHAPES, generate, write


def test_a_generated_dataset_has_the_asked_shape_unique_pairs_and_both_signs():
    d = generate(60, 40, 500, seed=1)
    r = d["ratings"]
    assert r.height == 500 and r.select("user_id", "item_id").n_unique() == 500
    assert set(r["rating"].unique().to_list()) <= {1, 2, 3, 4, 5}
    assert 0.2 < (r["rating"] > 3).mean() < 0.8                     # likes and dislikes
    assert d["items"].height == 40 and d["users"].height == 60
    assert d["items"]["description"].str.len_chars().min() > 20 and d["items"]["genres"].str.len_chars().min() > 2
    assert generate(60, 40, 500, seed=1)["ratings"].equals(r)       # seeded


def test_a_shape_denser_than_half_the_matrix_is_refused():
    with pytest.raises(ValueError, match="at most half"):
        generate(10, 10, 60)


def test_the_generic_table_reader_reads_a_written_dataset(tmp_path):
    out = write("steam", tmp_path / "syn", scale=0.01)
    cfg = load_config(data="synthetic", overrides=[f"data.path={out}"])
    raw = read_table(cfg.data, Path(out))
    n_users, n_items, n_inter = SHAPES["steam"]
    assert raw.interactions.height == round(n_inter * 0.01) and raw.items.height == n_items
    assert {"title", "categories", "description"} <= set(raw.items.columns)
    assert raw.items["categories"].dtype == pl.List(pl.String)
    assert cfg.data.item_text_fields == ["title", "categories", "description"]


def test_the_5_core_of_a_generated_dataset_keeps_every_user_item_and_interaction():
    from lagcl.data.prepare import reading_stats
    cfg = load_config(data="synthetic").data
    r = generate(300, 120, 2400, seed=2)["ratings"]  # 8 per user on average: a sparse shape
    inter = r.select(pl.col("user_id").alias("user_raw"), pl.col("item_id").alias("item_raw"), "rating", "timestamp")
    stats = reading_stats(inter, cfg, all_positive=False)
    assert (stats["users"], stats["items"], stats["interactions"]) == (300, 120, 2400)
    likes = r.filter(pl.col("rating") > 3)
    assert likes.group_by("user_id").len()["len"].min() >= 5 and likes.group_by("item_id").len()["len"].min() >= 5


def test_too_few_interactions_for_the_core_are_refused_with_what_it_needs():
    with pytest.raises(ValueError, match="that needs 1500"):
        generate(300, 120, 1000, core=5)

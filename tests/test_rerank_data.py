"""The reranker's inputs (eq. 13-15): candidate sets, histories, prompts, labels (docs/design.md decision 10)."""

from __future__ import annotations

import polars as pl
import pytest

from lagcl.errors import DataError
from lagcl.rerank.data import (HOLDOUT, TRAIN, PromptBuilder, build_pairs, candidate_sets, fallback_profiles,
                               histories, item_titles, split_users, training_examples, without_test)

SCHEMA = {"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64, "timestamp": pl.Int64, "sign": pl.Int8,
          "split": pl.String}


def interactions(rows: list[tuple[int, int, float, str]]) -> pl.DataFrame:
    return pl.DataFrame([{"user": u, "item": i, "rating": r, "timestamp": 1000 + n, "sign": 1 if r > 3 else -1,
                          "split": s} for n, (u, i, r, s) in enumerate(rows)], schema=SCHEMA)


def items_table(n: int) -> pl.DataFrame:
    return pl.DataFrame({"item": list(range(n)), "raw_id": [str(i) for i in range(n)],
                         "title": [f"Movie {i}" for i in range(n)],
                         "categories": [["Drama"] if i % 2 else ["Comedy"] for i in range(n)],
                         "year": ["1995"] * n}, schema_overrides={"item": pl.Int32})


USERS = pl.DataFrame({"user": [0, 1], "raw_id": ["a", "b"], "age": ["24", "53"], "gender": ["M", "F"],
                      "occupation": ["technician", "lawyer"], "zip_code": ["1", "2"]},
                     schema_overrides={"user": pl.Int32})


def cf(rows: dict[int, list[int]]) -> pl.DataFrame:
    out = [{"user": u, "item": i, "score": float(10 - r), "rank": r + 1} for u, lst in rows.items()
           for r, i in enumerate(lst)]
    return pl.DataFrame(out, schema={"user": pl.Int32, "item": pl.Int32, "score": pl.Float64, "rank": pl.Int32})


def builder(n_items: int = 12) -> PromptBuilder:
    up, ip = fallback_profiles(USERS, items_table(n_items))
    return PromptBuilder(up, ip, item_titles(items_table(n_items)), fmt="compact", profile_chars=200)


def test_labels_come_from_validation_and_no_test_label_reaches_training():
    inter = interactions([
        (0, 0, 5, "train"), (0, 1, 2, "train"),            # history: liked 0, disliked 1
        (0, 2, 5, "valid"), (0, 3, 4, "test"), (0, 4, 5, "test"),
        (1, 5, 5, "train"), (1, 6, 5, "valid"), (1, 7, 5, "test"),
    ])
    cands = candidate_sets(cf({0: [2, 3, 4, 8], 1: [7, 6, 9, 10]}), k=4)
    roles = {0: TRAIN, 1: TRAIN}
    pairs = build_pairs(cands, inter, histories(inter, None, 5), builder(), roles)
    positives = set(zip(*pairs.filter(pl.col("label") == 1).select("user", "item").to_dict(as_series=False).values()))
    assert positives == {(0, 2), (1, 6)}
    test_pairs = {(0, 3), (0, 4), (1, 7)}
    labelled = dict(zip(zip(pairs["user"].to_list(), pairs["item"].to_list()), pairs["label"].to_list()))
    assert all(labelled[p] == 0.0 for p in test_pairs)      # test positives in C_u are not labelled positive
    train = training_examples(pairs, neg_per_pos=None, max_pairs=None, seed=0)
    assert set(train.filter(pl.col("label") == 1)["item"].to_list()) == {2, 6}
    # and no test item appears in any history shown to the reranker
    hist = histories(inter, None, 5)
    shown = {i for col in ("liked", "disliked") for lst in hist[col].to_list() for i in lst}
    assert shown == {0, 1, 5}
    assert without_test(inter)["split"].unique().sort().to_list() == ["train", "valid"]


def test_candidate_sets_keep_the_cf_top_k_in_order():
    c = candidate_sets(cf({0: [5, 3, 9, 1], 1: [2, 4, 6, 8]}), k=2)
    assert c.select("user", "item", "cf_rank").rows() == [(0, 5, 1), (0, 3, 2), (1, 2, 1), (1, 4, 2)]
    assert candidate_sets(cf({0: [5]}), k=0).height == 0
    with pytest.raises(DataError, match="rerank.candidates"):
        candidate_sets(cf({0: [5, 3]}), k=3)


def test_histories_order_likes_and_dislikes_and_append_augmented_negatives():
    inter = interactions([(0, 1, 4, "train"), (0, 2, 5, "train"), (0, 3, 1, "train"), (0, 4, 3, "train"),
                          (0, 5, 5, "valid")])
    aug = pl.DataFrame({"user": [0, 0, 0], "item": [7, 8, 9], "sign": [-1, -1, 1], "score": [0.2, 0.9, 0.99]})
    h = histories(inter, aug, 10).row(0, named=True)
    assert h["liked"] == [2, 1]                    # highest rating first; the valid positive is not history
    assert h["disliked"] == [3, 4, 8, 7]           # lowest rating first, then augmented negatives by confidence
    assert histories(inter, aug, 1).row(0, named=True)["disliked"] == [3]


def test_the_prompt_holds_profile_candidate_and_both_histories():
    b = builder()
    text = b.render(0, 3, 2, [5, 3], liked=[1], disliked=[2])
    assert text.startswith("Candidate: Movie 3 (1995). Genres: Drama. CF rank 2 of 2.")
    assert "Liked: Movie 1 (1995)" in text and "Disliked: Movie 2 (1995)" in text
    assert "technician" in text
    cot = PromptBuilder(b.user_profiles, b.item_profiles, b.titles, fmt="cot", profile_chars=200, domain="movie")
    full = cot.render(0, 3, 2, [5, 3], liked=[1], disliked=[2])
    # the paper's Figure 19 sections, with the single-item classification block for eq. 14
    for section in ("USER INFORMATION", "CANDIDATE ITEMS", "USER INTERACTION HISTORY", "RANKING REASONING PROCESS",
                    "[TRAINING PHASE ONLY]"):
        assert section in full
    assert '"Movie 1 (1995). Genres: Drama."' in full


def test_users_split_into_training_and_holdout_reproducibly():
    a = split_users(list(range(100)), 0.2, seed=3)
    assert sum(r == HOLDOUT for r in a.values()) == 20
    assert a == split_users(list(range(100)), 0.2, seed=3)


def test_training_examples_sample_negatives_per_positive():
    pairs = pl.DataFrame({"user": [0] * 10, "item": list(range(10)), "label": [1.0, 1.0] + [0.0] * 8,
                          "role": [TRAIN] * 10, "text": ["t"] * 10})
    ex = training_examples(pairs, neg_per_pos=2, max_pairs=None, seed=0)
    assert ex.height == 6 and ex["label"].sum() == 2
    assert training_examples(pairs, neg_per_pos=None, max_pairs=5, seed=0).height == 5
    with pytest.raises(DataError):
        training_examples(pairs.with_columns(pl.lit(0.0).alias("label")), 2, None, 0)

"""scripts/bench_official.py: our split and groups exported in the authors' file formats, their conf pointed at
our files, their per-epoch embeddings scored by our evaluator under our ids; scripts/official_runner.py's
reading of their option strings. No run of the benchmark."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from scripts.bench_official import Split, best_valid, export, score_theirs, split_rows, their_conf
from scripts.official_runner import option_string, read_group_file


def small_split() -> Split:
    """Two users (raw ids 7, 9), three items (raw ids 101, 102, 103); user 7 dislikes item 102."""
    inter = pl.DataFrame({
        "user": [0, 0, 0, 0, 1, 1, 1],
        "item": [0, 1, 2, 0, 1, 2, 0],
        "sign": [1, -1, 1, 1, 1, 1, 1],
        "split": ["train", "train", "test", "x", "train", "valid", "test"],
    }, schema={"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8, "split": pl.String}).filter(
        pl.col("split") != "x")
    users = pl.DataFrame({"user": [0, 1], "raw_id": ["7", "9"]}, schema={"user": pl.Int32, "raw_id": pl.String})
    items = pl.DataFrame({"item": [0, 1, 2], "raw_id": ["101", "102", "103"]},
                         schema={"item": pl.Int32, "raw_id": pl.String})
    return Split(inter, users, items, torch.tensor([3, 5]), torch.tensor([0, 0, 1]), "test groups")


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_train_file_holds_positives_at_1_and_dislikes_at_minus_1_tab_separated_by_raw_ids(tmp_path):
    paths = export(small_split(), tmp_path)
    assert lines(paths["train"]) == ["7\t101\t1", "7\t102\t-1", "9\t102\t1"]


def test_valid_and_test_files_hold_only_that_splits_positives(tmp_path):
    paths = export(small_split(), tmp_path)
    assert lines(paths["valid"]) == ["9\t103\t1"]
    assert lines(paths["test"]) == ["7\t103\t1", "9\t101\t1"]


def test_group_files_give_every_user_and_item_one_group_keyed_by_raw_id(tmp_path):
    paths = export(small_split(), tmp_path)
    assert lines(paths["user_group"]) == ["7,3", "9,5"]
    assert lines(paths["item_group"]) == ["101,0", "102,0", "103,1"]
    assert read_group_file(paths["item_group"]) == {"101": 0, "102": 0, "103": 1}


def test_a_test_split_dislike_is_not_exported_as_a_test_item():
    split = small_split()
    inter = pl.concat([split.interactions, pl.DataFrame(
        {"user": [1], "item": [1], "sign": [-1], "split": ["test"]},
        schema=split.interactions.schema)])
    rows = split_rows(Split(inter, split.users, split.items, split.user_group, split.item_group, ""), "test")
    assert rows.rows() == [("7", "103", 1), ("9", "101", 1)]


def test_their_conf_points_at_our_files_and_epochs_and_keeps_their_other_settings(tmp_path):
    (tmp_path / "XSimGCL.conf").write_text("training.set=./a/train.txt\ntest.set=./a/test.txt\n"
                                           "num.max.epoch=50\nlearnRate=0.0035\nX=-n 2 -t 1\n")
    text = their_conf(tmp_path, {"train": "/d/train.txt", "test": "/d/test.txt"}, epochs=3)
    assert text.splitlines() == ["training.set=/d/train.txt", "test.set=/d/test.txt", "num.max.epoch=3",
                                 "learnRate=0.0035", "X=-n 2 -t 1"]


def test_option_strings_read_as_key_value_pairs():
    assert option_string("-n_layer 2 -l* 1 -lambda 0.17 -eps 0.2 -tau 1") == {
        "-n_layer": "2", "-l*": "1", "-lambda": "0.17", "-eps": "0.2", "-tau": "1"}
    assert option_string("-topN 10,20") == {"-topN": "10,20"}
    assert option_string("-dir ./results/") == {"-dir": "./results/"}


def test_their_embeddings_are_scored_under_our_ids_whatever_their_order():
    split = small_split()
    # their loader's order: user 9 first, item 103 first; user 7 likes item 103 best of its unmasked items
    result = {"user_ids": ["9", "7"], "item_ids": ["103", "102", "101"]}
    item = np.eye(3, dtype=np.float32)  # their row k: the k-th of item_ids
    user = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0]], dtype=np.float32)  # 9: 102 > 101 > 103; 7: 103
    rows = score_theirs(split, result, user[None], item[None])
    # test: 7 -> 103 (train 101 masked) ranked first; 9 -> 101 ranked first once 102 (train) and 103 (valid)
    # are masked; both users have one test item: recall 1, NDCG 1
    assert rows[0]["test_recall@20"] == 1.0 and rows[0]["test_ndcg@20"] == 1.0
    # valid: only user 9 (truth 103), 102 masked: 101 (0.5) before 103 (0.0) -> NDCG 1/log2(3)
    assert rows[0]["valid_recall@20"] == 1.0
    assert abs(rows[0]["valid_ndcg@20"] - 1 / np.log2(3)) < 1e-9


def test_items_their_loader_never_saw_are_never_recommended():
    split = small_split()
    # 22 more items without interactions, so that a top 20 can leave some out
    filler = [str(200 + k) for k in range(22)]
    items = pl.concat([split.items, pl.DataFrame({"item": range(3, 25), "raw_id": filler},
                                                 schema=split.items.schema)])
    split = Split(split.interactions, split.users, items, split.user_group, torch.zeros(25, dtype=torch.long), "")
    seen = ["101", "102", *filler]  # 103 had no training positive in their data
    result = {"user_ids": ["7", "9"], "item_ids": seen}
    item = np.eye(len(seen), dtype=np.float32)
    # user 7 scores every seen item -1 (an unseen item, with no embedding, would score 0 and come first)
    user = np.stack([-np.ones(len(seen)), np.eye(len(seen))[0]]).astype(np.float32)  # 9: item 101 first
    rows = score_theirs(split, result, user[None], item[None])
    # user 7's test item 103 is unseen: out of the top 20 behind the 23 items it can score; user 9 finds 101
    assert rows[0]["test_recall@20"] == 0.5


def test_best_validation_epoch_is_the_first_with_the_highest_validation_recall():
    rows = [{"epoch": 1, "valid_recall@20": 0.1}, {"epoch": 2, "valid_recall@20": 0.3},
            {"epoch": 3, "valid_recall@20": 0.3}, {"epoch": 4, "valid_recall@20": 0.2}]
    assert best_valid(rows)["epoch"] == 2

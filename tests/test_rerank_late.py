"""The late-interaction reranker (spec.style = late): texts encoded once each, pair features, the trained head,
and the device setting it runs on."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lagcl.device import resolve_device
from lagcl.errors import ConfigError
from lagcl.rerank.late import TextEmbeddings, encode_texts, pair_features, score_features, train_head


class CountingEncoder:
    """A stand-in sentence encoder: a fixed vector per text, and a record of every text it was given."""

    def __init__(self, dim: int = 4):
        self.dim, self.seen = dim, []

    def encode(self, texts):
        self.seen.extend(texts)
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=self.dim) for t in texts])


def test_each_user_and_item_text_is_encoded_once_whatever_the_number_of_pairs():
    enc = CountingEncoder()
    users = [3, 1, 3, 1, 1]                       # repeated ids: one pair each, still one text each
    items = [7, 8, 9, 7, 8, 9, 7]
    emb = encode_texts(enc, {1: "user one", 3: "user three"}, {7: "seven", 8: "eight"}, users, items, chars=4)
    assert sorted(enc.seen) == sorted(["user", "user", "seve", "eigh", "item"])   # cut to 4 characters
    assert emb.encoded == 5 and emb.users.shape == (2, 4) and emb.items.shape == (3, 4)
    assert set(emb.user_index) == {1, 3} and set(emb.item_index) == {7, 8, 9}
    assert np.allclose(np.linalg.norm(emb.items, axis=1), 1.0)                   # unit norm


def unit(*v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_pair_features_hold_the_similarities_of_the_candidate_to_the_user_and_the_histories():
    emb = TextEmbeddings(users=np.stack([unit(1, 0, 0)]), items=np.stack([unit(1, 0, 0), unit(0, 1, 0),
                                                                         unit(0, 0, 1), unit(1, 1, 0)]),
                         user_index={0: 0}, item_index={10: 0, 11: 1, 12: 2, 13: 3})
    hist = pl.DataFrame({"user": [0], "liked": [[11, 13]], "disliked": [[12]]},
                        schema={"user": pl.Int32, "liked": pl.List(pl.Int32), "disliked": pl.List(pl.Int32)})
    pairs = pl.DataFrame({"user": [0, 0], "item": [10, 11], "cf_rank": [1, 2]})
    x = pair_features(pairs, hist, emb, k=2)
    d = 3
    assert x.shape == (2, 3 * d + 8)
    e_u_dot, like_dot, dis_dot, like_max, dis_max, has_l, has_d, rank = x[:, 3 * d:].T
    h_like = unit(1 / np.sqrt(2), 1 + 1 / np.sqrt(2), 0)                          # mean of items 11 and 13, unit
    assert e_u_dot == pytest.approx([1.0, 0.0], abs=1e-6)
    assert like_dot == pytest.approx([h_like[0], h_like[1]], abs=1e-6)
    assert dis_dot == pytest.approx([0.0, 0.0], abs=1e-6)
    assert like_max == pytest.approx([1 / np.sqrt(2), 1.0], abs=1e-6)           # item 13 for 10, item 11 itself
    assert has_l.tolist() == [1.0, 1.0] and has_d.tolist() == [1.0, 1.0]
    assert rank == pytest.approx([1.0, 0.5])                                     # 1 - (rank - 1) / |C_u|
    assert x[0, :d] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)                  # e_u * e_v


def test_a_user_without_history_gets_zero_history_features():
    emb = TextEmbeddings(np.stack([unit(1, 0)]), np.stack([unit(0, 1)]), {5: 0}, {9: 0})
    hist = pl.DataFrame(schema={"user": pl.Int32, "liked": pl.List(pl.Int32), "disliked": pl.List(pl.Int32)})
    x = pair_features(pl.DataFrame({"user": [5], "item": [9], "cf_rank": [1]}), hist, emb, k=1)
    assert x[0, 2:6].tolist() == [0.0] * 4 and x[0, 7:13].tolist() == [0.0] * 6   # h+ and h- terms, then scalars


def test_the_head_learns_a_separable_label_and_a_finished_head_is_loaded_not_retrained(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
    kw = dict(hidden=8, epochs=30, lr=0.01, weight_decay=0.0, batch_size=64, seed=1)
    res = train_head(x, y, tmp_path, **kw)
    s = score_features(res.head, x)
    assert not res.skipped and res.global_step == 30 * 7 and res.train_loss < 0.2
    assert ((s > 0) == (y > 0)).mean() > 0.95
    again = train_head(x[:10], y[:10], tmp_path, **kw)                            # done.json exists: loaded
    assert again.skipped and again.global_step == res.global_step
    assert np.array_equal(score_features(again.head, x), s)


def test_the_head_is_seeded(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 3)).astype(np.float32), rng.integers(0, 2, 100).astype(float)
    kw = dict(hidden=4, epochs=3, lr=0.01, weight_decay=0.0, batch_size=16, seed=7)

    def scores(d):
        return score_features(train_head(x, y, d, **kw).head, x)

    assert np.array_equal(scores(tmp_path / "a"), scores(tmp_path / "b"))


def test_device_settings_resolve_to_torch_devices(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="use auto, cpu, cuda"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:2")

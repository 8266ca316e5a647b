"""`prepare`: signs follow the rating threshold, the k-core of positives is a fixed point, every user's
positives are split 7:1:2 with RecBole's rounding, deterministically for a seed, and negatives stay in
training for surviving users and items only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lagcl.config import DataConfig, load_config
from lagcl.data.fetch import ensure_ml100k
from lagcl.data.prepare import kcore, prepare, split_counts
from lagcl.data.readers import RawDataset, read_raw

REPO = Path(__file__).resolve().parent.parent
RATIOS = (0.7, 0.1, 0.2)


def data_config(**kw) -> DataConfig:
    return DataConfig(name="synthetic", format="table", path="unused", **kw)


def synthetic(n_users: int = 80, n_items: int = 60, density: float = 0.35, seed: int = 0) -> RawDataset:
    """Random 1-5 ratings with skewed activity, so k-core has users and items to remove."""
    rng = np.random.default_rng(seed)
    activity = rng.uniform(0.05, 1.0, n_users)[:, None] * rng.uniform(0.05, 1.0, n_items)[None, :]
    mask = rng.random((n_users, n_items)) < density * activity / activity.mean()
    u, i = np.nonzero(mask)
    return RawDataset(pl.DataFrame({
        "user_raw": [f"u{x}" for x in u], "item_raw": [f"i{x}" for x in i],
        "rating": rng.integers(1, 6, len(u)).astype(float), "timestamp": rng.integers(0, 10**9, len(u)),
    }), pl.DataFrame(), pl.DataFrame())


def with_raw_ids(p) -> pl.DataFrame:
    return (p.interactions.join(p.users.select("user", user_raw="raw_id"), on="user")
            .join(p.items.select("item", item_raw="raw_id"), on="item"))


@pytest.fixture(scope="module")
def raw() -> RawDataset:
    return synthetic()


@pytest.fixture(scope="module")
def prepared(raw):
    return prepare(raw, data_config(), seed=7)


def test_signs_follow_the_rating_threshold(prepared):
    inter = prepared.interactions
    assert inter.filter((pl.col("rating") > 3) != (pl.col("sign") == 1)).height == 0
    assert set(inter["sign"].unique()) == {-1, 1}


def test_all_positive_datasets_sign_everything_positive(raw):
    p = prepare(raw, data_config(all_positive=True), seed=7)
    assert p.interactions["sign"].unique().to_list() == [1]


def test_kcore_reaches_a_fixed_point(prepared):
    pos = with_raw_ids(prepared).filter(pl.col("sign") > 0)
    assert pos.group_by("user").len()["len"].min() >= 5
    assert pos.group_by("item").len()["len"].min() >= 5
    assert kcore(pos, 5).height == pos.height  # one more pass removes nothing
    assert prepared.stats["users"] < 80 and prepared.stats["items"] < 60  # the fixture did need filtering


def test_kcore_cascades_removals_until_nothing_changes():
    # k=2: u4 has one positive -> gone; then i3 has one -> gone; then u3 has one -> gone
    pairs = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"), ("u3", "i2"), ("u3", "i3"), ("u4", "i3")]
    pos = pl.DataFrame({"user_raw": [u for u, _ in pairs], "item_raw": [i for _, i in pairs]})
    assert sorted(kcore(pos, 2).rows()) == [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2")]


def test_split_counts_follow_recbole_rounding():
    assert split_counts(10, RATIOS) == (7, 1, 2)
    assert split_counts(20, RATIOS) == (14, 2, 4)
    assert split_counts(5, RATIOS) == (3, 1, 1)  # valid's share 0.5 is lent one interaction
    assert split_counts(7, RATIOS) == (5, 1, 1)
    assert split_counts(2, RATIOS) == (1, 0, 1)  # train keeps at least one


def test_each_users_positives_are_split_7_1_2(prepared):
    pos = prepared.interactions.filter(pl.col("sign") > 0)
    per_user = pos.group_by("user").agg(
        pl.len().alias("n"), *[(pl.col("split") == s).sum().alias(s) for s in ("train", "valid", "test")])
    for n, tr, va, te in per_user.select("n", "train", "valid", "test").iter_rows():
        assert (tr, va, te) == split_counts(n, RATIOS)


def test_splits_are_disjoint(prepared):
    inter = prepared.interactions
    assert inter.select("user", "item").is_duplicated().sum() == 0
    pairs = {s: set(inter.filter(pl.col("split") == s).select("user", "item").iter_rows())
             for s in ("train", "valid", "test")}
    assert not pairs["train"] & pairs["valid"] and not pairs["train"] & pairs["test"]
    assert not pairs["valid"] & pairs["test"]


def test_split_is_deterministic_for_a_seed_and_differs_for_another(raw, prepared):
    again = prepare(raw, data_config(), seed=7)
    assert again.interactions.equals(prepared.interactions)
    other = prepare(raw, data_config(), seed=8)
    assert other.interactions.select("user", "item").equals(prepared.interactions.select("user", "item"))
    assert not other.interactions["split"].equals(prepared.interactions["split"])


def test_negatives_stay_in_train_for_surviving_users_and_items_only(raw, prepared):
    inter = with_raw_ids(prepared)
    neg = inter.filter(pl.col("sign") < 0)
    assert neg["split"].unique().to_list() == ["train"]
    users, items = set(prepared.users["raw_id"]), set(prepared.items["raw_id"])
    expected = raw.interactions.filter(
        (pl.col("rating") <= 3) & pl.col("user_raw").is_in(list(users)) & pl.col("item_raw").is_in(list(items)))
    assert sorted(neg.select("user_raw", "item_raw").iter_rows()) == sorted(
        expected.select("user_raw", "item_raw").iter_rows())
    dropped_negatives = raw.interactions.filter(pl.col("rating") <= 3).height - expected.height
    assert dropped_negatives > 0  # some negatives belonged to filtered users or items


def test_real_ml100k_has_the_expected_5_core(tmp_path):
    cfg = load_config("ml-100k").data
    ensure_ml100k(REPO / cfg.path)  # downloads the recbole wheel with pip on a fresh checkout
    p = prepare(read_raw(cfg, REPO), cfg, seed=2024)
    assert (p.stats["users"], p.stats["items"], p.stats["positives"]) == (938, 1008, 54413)
    assert p.stats["raw_interactions"] == 100_000


def _positives(rows):
    return pl.DataFrame(rows, schema={"user_raw": pl.String, "item_raw": pl.String}, orient="row").with_columns(
        pl.col("user_raw").rank("dense").cast(pl.Int32).alias("user") - 1,
        pl.col("item_raw").rank("dense").cast(pl.Int32).alias("item") - 1)


def test_a_split_keyed_by_raw_ids_moves_only_the_users_who_got_new_ratings():
    from lagcl.data.prepare import assign_split

    rows = [(f"u{u}", f"i{(u * 7 + k * 3) % 60}") for u in range(30) for k in range(12)]
    new = [("u5", "i61"), ("u5", "i62"), ("u5", "i63"), ("u0", "i64")]  # new items renumber every id after them
    split = lambda rs, key: {(r["user_raw"], r["item_raw"]): r["split"]  # noqa: E731
                             for r in assign_split(_positives(rs), (0.7, 0.1, 0.2), 7, key).iter_rows(named=True)}
    before, after = split(rows, "raw_ids"), split(rows + new, "raw_ids")
    moved = {u for (u, i), s in before.items() if after[(u, i)] != s}
    assert moved <= {"u5", "u0"}
    draw_before, draw_after = split(rows, "draw"), split(rows + new, "draw")
    assert len({u for (u, i), s in draw_before.items() if draw_after[(u, i)] != s}) > 10  # the old draw moves many
    counts = _positives(rows).group_by("user_raw").len()
    assert sum(1 for s in before.values() if s == "train") == sum(split_counts(n, (0.7, 0.1, 0.2))[0]
                                                                  for n in counts["len"].to_list())

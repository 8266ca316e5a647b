"""Sign, 5-core, split and index a RawDataset into the three canonical tables (docs/design.md 1-3).

- duplicates: one row per (user, item), the latest timestamp winning (DUPLICATE_RULE); merged pairs are
  counted in the stats;
- sign: rating > threshold -> +1, else -1 (all +1 for implicit datasets, and for Steam unless
  `data.steam_signed`);
- k-core: iterative on positive interactions until every user and item has >= k positives;
  negatives are kept only for surviving users and items;
- split: per user, a seeded random 7:1:2 of positives (RecBole's rounding: valid and test get at
  least one each when their share is below one); negatives carry split "train";
- ids: contiguous int32 in order of raw id; raw ids stay in `users`/`items`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers import RawDataset
from lagcl.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class Prepared:
    interactions: pl.DataFrame  # user, item, rating, timestamp, sign, split
    users: pl.DataFrame  # user, raw_id, <attrs>
    items: pl.DataFrame  # item, raw_id, title, categories, <attrs>
    stats: dict[str, object]


def sign_interactions(inter: pl.DataFrame, threshold: float, all_positive: bool) -> pl.DataFrame:
    sign = pl.lit(1, dtype=pl.Int8) if all_positive else (
        pl.when(pl.col("rating") > threshold).then(1).otherwise(-1).cast(pl.Int8))
    return inter.with_columns(sign.alias("sign"))


DUPLICATE_RULE = ("one row per (user, item): the latest timestamp wins; on equal timestamps, the row read last "
                  "(the later line of the file)")


def merge_duplicates(inter: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, object]]:
    """One row per (user, item) by DUPLICATE_RULE, and what was merged: pairs given more than once, rows
    dropped, and pairs whose rows disagree on the rating (Steam repeats whole user records: equal rows)."""
    inter = inter.with_row_index("_line")
    counts = inter.group_by(["user_raw", "item_raw"]).agg(pl.len().alias("n"), pl.col("rating").n_unique().alias("r"))
    repeated = counts.filter(pl.col("n") > 1)
    merged = (inter.sort(["user_raw", "item_raw", "timestamp", "_line"])
              .unique(["user_raw", "item_raw"], keep="last", maintain_order=True).drop("_line"))
    return merged, {"pairs_repeated": repeated.height, "rows_dropped": int(repeated["n"].sum() - repeated.height),
                    "pairs_with_different_ratings": repeated.filter(pl.col("r") > 1).height, "rule": DUPLICATE_RULE}


def all_positive(cfg: DataConfig) -> bool:
    """Every interaction positive: implicit datasets, and Steam read as the paper does (not `steam_signed`)."""
    return cfg.all_positive and not cfg.steam_signed


def reading_stats(inter: pl.DataFrame, cfg: DataConfig, all_positive: bool) -> dict[str, object]:
    """Table 1 (users, items, interactions, positives, negatives, density) after signing with or without
    every interaction positive and the k-core of positives, as `prepare` computes them."""
    signed = sign_interactions(inter.drop("sign", strict=False), cfg.rating_threshold, all_positive)
    pos = kcore(signed.filter(pl.col("sign") > 0), cfg.kcore)
    users, items = pos["user_raw"].unique(), pos["item_raw"].unique()
    neg = signed.filter((pl.col("sign") < 0) & pl.col("user_raw").is_in(users.implode())
                        & pl.col("item_raw").is_in(items.implode()))
    n = pos.height + neg.height
    return {"users": users.len(), "items": items.len(), "interactions": n, "positives": pos.height,
            "negatives": neg.height, "density": n / float(users.len() * items.len()) if n else 0.0}


def kcore(pos: pl.DataFrame, k: int) -> pl.DataFrame:
    """Iteratively drop users and items with fewer than k rows until none is left to drop."""
    while True:
        n = pos.height
        pos = pos.filter(
            (pl.len().over("user_raw") >= k)
        )
        pos = pos.filter(pl.len().over("item_raw") >= k)
        if pos.height == n:
            return pos


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """RecBole's `_calcu_split_ids`: floor the shares, give the rest to train, and lend valid/test
    one interaction each when their exact share is in (0, 1) and train keeps more than one."""
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - cnt[1] - cnt[2]
    for i in (2, 1):
        if cnt[0] <= 1:
            break
        if 0 < ratios[i] * n < 1:
            cnt[i] += 1
            cnt[0] -= 1
    return cnt[0], cnt[1], cnt[2]


def assign_split(pos: pl.DataFrame, ratios: tuple[float, float, float], seed: int, key: str = "raw_ids"
                 ) -> pl.DataFrame:
    """Per-user seeded random split; deterministic for a seed whatever the input row order.

    key="raw_ids": a positive's place in its user's random order is a hash of (seed, raw user id, raw item id),
    so a user's split depends only on that user's own positives: appended ratings move the users who got them
    and no one else. key="draw": one seeded draw over all rows in (user, item) order (every user moves when any
    row is added before them)."""
    pos = pos.sort(["user", "item"])
    if key == "raw_ids":
        from lagcl.hashing import stable_key

        u = pos["user_raw"] if "user_raw" in pos.columns else pos["user"]
        i = pos["item_raw"] if "item_raw" in pos.columns else pos["item"]
        keys = [stable_key(f"{seed}/{a}/{b}") for a, b in zip(u.to_list(), i.to_list())]
        pos = pos.with_columns(pl.Series("_key", keys, dtype=pl.UInt64))
    else:
        rng = np.random.default_rng(seed)
        pos = pos.with_columns(pl.Series("_key", rng.random(pos.height)))
    pos = pos.with_columns(
        pl.col("_key").rank("ordinal").over("user").cast(pl.Int64).alias("_rank"),
        pl.len().over("user").alias("_n"),
    )
    sizes = {n: split_counts(n, ratios) for n in pos["_n"].unique().to_list()}
    n_train = pos["_n"].map_elements(lambda n: sizes[n][0], return_dtype=pl.Int64)
    n_valid = pos["_n"].map_elements(lambda n: sizes[n][1], return_dtype=pl.Int64)
    pos = pos.with_columns(n_train.alias("_tr"), n_valid.alias("_va"))
    split = (pl.when(pl.col("_rank") <= pl.col("_tr")).then(pl.lit("train"))
             .when(pl.col("_rank") <= pl.col("_tr") + pl.col("_va")).then(pl.lit("valid"))
             .otherwise(pl.lit("test")))
    return pos.with_columns(split.alias("split")).drop("_key", "_rank", "_n", "_tr", "_va")


def table1_stats(inter: pl.DataFrame, n_users: int, n_items: int) -> dict[str, object]:
    """The statistics of the paper's Table 1, plus positives/negatives per split."""
    pos = inter.filter(pl.col("sign") > 0)
    neg = inter.filter(pl.col("sign") < 0)
    stats: dict[str, object] = {
        "users": n_users,
        "items": n_items,
        "interactions": inter.height,
        "positives": pos.height,
        "negatives": neg.height,
        "density": inter.height / float(n_users * n_items) if n_users and n_items else 0.0,
        "positive_density": pos.height / float(n_users * n_items) if n_users and n_items else 0.0,
    }
    for s in SPLITS:
        stats[f"positives_{s}"] = pos.filter(pl.col("split") == s).height
    stats["negatives_train"] = neg.height
    return stats


def prepare(raw: RawDataset, cfg: DataConfig, seed: int) -> Prepared:
    inter = raw.interactions
    if inter.height == 0:
        raise DataError(f"dataset '{cfg.name}' has no interactions; check the files under {cfg.path}")
    # ratings outside data.rating_range never get here: the readers report them with file:line (or skip and
    # count them in lenient mode)
    inter, duplicates = merge_duplicates(inter)
    inter = sign_interactions(inter, cfg.rating_threshold, all_positive(cfg))
    pos = kcore(inter.filter(pl.col("sign") > 0), cfg.kcore)
    if pos.height == 0:
        raise DataError(
            f"dataset '{cfg.name}' is empty after {cfg.kcore}-core filtering of positives: "
            f"{inter.height} interactions, {inter.filter(pl.col('sign') > 0).height} positive "
            f"(rating > {cfg.rating_threshold}), {inter['user_raw'].n_unique()} users, "
            f"{inter['item_raw'].n_unique()} items. Lower data.kcore or data.rating_threshold, or add data."
        )
    user_ids = pos["user_raw"].unique().sort()
    item_ids = pos["item_raw"].unique().sort()
    umap = pl.DataFrame({"user_raw": user_ids, "user": pl.int_range(0, len(user_ids), eager=True).cast(pl.Int32)})
    imap = pl.DataFrame({"item_raw": item_ids, "item": pl.int_range(0, len(item_ids), eager=True).cast(pl.Int32)})
    neg = inter.filter(pl.col("sign") < 0)
    pos = pos.join(umap, on="user_raw").join(imap, on="item_raw")
    neg = neg.join(umap, on="user_raw").join(imap, on="item_raw").with_columns(pl.lit("train").alias("split"))
    pos = assign_split(pos, cfg.split, seed, cfg.split_key)
    cols = ["user", "item", "rating", "timestamp", "sign", "split"]
    out = pl.concat([pos.select(cols), neg.select(cols)]).sort(["user", "item"])

    users = umap.rename({"user_raw": "raw_id"}).join(raw.users, on="raw_id", how="left").select(
        ["user", "raw_id", *[c for c in raw.users.columns if c != "raw_id"]]).sort("user")
    items = imap.rename({"item_raw": "raw_id"}).join(raw.items, on="raw_id", how="left")
    items = items.with_columns(
        pl.col("title").fill_null(pl.col("raw_id")),
        pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    ).select(["item", "raw_id", "title", "categories",
              *[c for c in raw.items.columns if c not in ("raw_id", "title", "categories")]]).sort("item")
    stats = table1_stats(out, len(user_ids), len(item_ids))
    stats["skipped_lines"] = raw.skipped_lines
    stats["skipped"] = raw.skipped
    stats["duplicates"] = duplicates
    if cfg.format == "steam":  # Table 1 under both readings of `recommend`, whichever this run uses
        stats["steam_readings"] = {
            "all_positive (paper)": reading_stats(inter, cfg, all_positive=True),
            "signed (data.steam_signed)": reading_stats(inter, cfg, all_positive=False)}
    stats["raw_interactions"] = raw.interactions.height
    stats["reader_notes"] = raw.notes
    return Prepared(out, users, items, stats)

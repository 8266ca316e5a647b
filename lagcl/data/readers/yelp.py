"""Yelp Open Dataset: JSON lines, UTF-8, one record per line.

`yelp_academic_dataset_review.json` (user_id, business_id, stars, date 'YYYY-MM-DD HH:MM:SS', text),
`yelp_academic_dataset_business.json` (business_id, name, categories as one 'A, B' string, city,
state, stars, review_count) and, optional, `yelp_academic_dataset_user.json` (user_id, review_count,
average_stars, fans, yelping_since). The review file is large: it is streamed, its texts never kept.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles
from lagcl.data.readers.values import (CATEGORIES, RecordFiles, field, iso_timestamp, opt_float, opt_int, opt_str,
                                       split_list, to_float, to_id)


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return ({"reviews": "yelp_academic_dataset_review.json", "businesses": "yelp_academic_dataset_business.json"},
            {"users": "yelp_academic_dataset_user.json"})


def read_yelp(cfg: DataConfig, root: Path) -> RawDataset:
    """Yelp Open Dataset: reviews (stars, date) + businesses (name, 'A, B' categories, city, state)
    + users (a few scalar attributes; optional, the file is large and only adds attributes)."""
    src = RecordFiles(cfg, root, file_roles(cfg))
    inter = src.interactions("reviews", lambda r: [(
        to_id(field(r, "user_id"), "user_id"), to_id(field(r, "business_id"), "business_id"),
        to_float(field(r, "stars"), "stars"), iso_timestamp(field(r, "date"), "date"))])
    items = src.metadata("businesses", "business_id", lambda r: (
        opt_str(r.get("name")), split_list(r.get("categories"), ","), opt_str(r.get("city")),
        opt_str(r.get("state")), opt_float(r.get("stars")), opt_int(r.get("review_count"))), {
        "raw_id": pl.String, "title": pl.String, "categories": CATEGORIES, "city": pl.String,
        "state": pl.String, "stars": pl.Float64, "review_count": pl.Int64})
    users = pl.DataFrame()
    if "users" in src.paths:
        users = src.metadata("users", "user_id", lambda r: (
            opt_int(r.get("review_count")), opt_float(r.get("average_stars")), opt_int(r.get("fans")),
            opt_str(r.get("yelping_since"))), {
            "raw_id": pl.String, "review_count": pl.Int64, "average_stars": pl.Float64, "fans": pl.Int64,
            "yelping_since": pl.String})
    return src.dataset(inter, users, items)

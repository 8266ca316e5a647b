"""Amazon reviews (McAuley lab), 2018 and 2023 releases: a category's reviews file + its metadata file,
JSON lines (the 2014 release: Python literals), UTF-8; the 2018 files are gzipped (`.gz`, read through gzip).

2018: `<Category>.json.gz` + `meta_<Category>.json.gz`; 2023: `<Category>.jsonl` + `meta_<Category>.jsonl`.
Neither release has one standard file name (one file per category), so `data.files.reviews` and
`data.files.meta` name them. The review files are large: they are streamed, their texts never kept.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles
from lagcl.data.readers.lines import PARSE_ERRORS
from lagcl.data.readers.values import (ITEM_META, RecordFiles, field, opt_float, opt_str, str_list, to_float, to_id,
                                       to_int)


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return {"reviews": None, "meta": None}, {}


def json_or_literal(line: str) -> Any:
    """Amazon's 2014 files are Python literals, its 2018 files JSON: accept both (and report the JSON
    error for a line that is neither)."""
    try:
        return json.loads(line)
    except ValueError as exc:
        try:
            return ast.literal_eval(line)
        except PARSE_ERRORS:
            raise exc from None


def read_amazon2018(cfg: DataConfig, root: Path) -> RawDataset:
    """Amazon 2018 (McAuley lab): `<Category>.json.gz` reviews + `meta_<Category>.json.gz`.

    Reviews: reviewerID, asin, overall (1-5), unixReviewTime. Metadata: asin, title, category (a list;
    the 2014 release's `categories` list of lists is flattened), brand, main_cat. Lines may be JSON or,
    as in the 2014 release, Python literals.
    """
    src = RecordFiles(cfg, root, file_roles(cfg), json_or_literal)
    inter = src.interactions("reviews", lambda r: [(
        to_id(field(r, "reviewerID"), "reviewerID"), to_id(field(r, "asin"), "asin"),
        to_float(field(r, "overall"), "overall"), to_int(field(r, "unixReviewTime"), "unixReviewTime"))])
    items = src.metadata("meta", "asin", lambda r: (
        opt_str(r.get("title")),
        str_list(r.get("category") if r.get("category") is not None else r.get("categories")),
        opt_str(r.get("brand")), opt_str(r.get("main_cat")),
    ), {**ITEM_META, "brand": pl.String, "main_category": pl.String})
    return src.dataset(inter, pl.DataFrame(), items)


def read_amazon2023(cfg: DataConfig, root: Path) -> RawDataset:
    """Amazon Reviews 2023 (McAuley lab): `<Category>.jsonl` reviews + `meta_<Category>.jsonl`.

    Reviews: user_id, parent_asin (the item: variants of one product share it), rating, timestamp
    in milliseconds (stored here in seconds like every other format). Metadata: parent_asin, title,
    categories, main_category, store.
    """
    src = RecordFiles(cfg, root, file_roles(cfg))
    inter = src.interactions("reviews", lambda r: [(
        to_id(field(r, "user_id"), "user_id"), to_id(field(r, "parent_asin"), "parent_asin"),
        to_float(field(r, "rating"), "rating"), to_int(field(r, "timestamp"), "timestamp") // 1000)])
    items = src.metadata("meta", "parent_asin", lambda r: (
        opt_str(r.get("title")), str_list(r.get("categories")), opt_str(r.get("main_category")),
        opt_str(r.get("store")), opt_float(r.get("average_rating")),
    ), {**ITEM_META, "main_category": pl.String, "store": pl.String, "average_rating": pl.Float64})
    return src.dataset(inter, pl.DataFrame(), items)

"""Steam (Kang & McAuley, McAuley lab), the Australian user reviews: Python-literal lines, UTF-8.

`australian_user_reviews.json`: one user per line (user_id, reviews: a list of {item_id, recommend,
posted 'Posted November 5, 2011.', review}); `steam_games.json`: one game per line (id, app_name or
title, genres, tags, developer, release_date).
"""

from __future__ import annotations

import ast
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles
from lagcl.data.readers.values import (CATEGORIES, ITEM_META, BadRecord, RecordFiles, field, opt_str, str_list,
                                       to_id)

MONTHS = {m: i for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                      "september", "october", "november", "december"), start=1)}
POSTED = re.compile(r"^\s*Posted\s+([A-Za-z]+)\s+(\d{1,2})(?:\s*,\s*(\d{4}))?\s*\.?\s*$")


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return {"reviews": "australian_user_reviews.json", "games": "steam_games.json"}, {}


def steam_posted(value: Any) -> int | None:
    """'Posted November 5, 2011.' -> unix seconds; None when there is no year ('Posted July 15.', the
    crawl year, which the data does not state) or the text is not such a date."""
    m = POSTED.match(str(value or ""))
    if not m or not m.group(3) or m.group(1).lower() not in MONTHS:
        return None
    try:
        return int(datetime(int(m.group(3)), MONTHS[m.group(1).lower()], int(m.group(2)),
                            tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def read_steam(cfg: DataConfig, root: Path) -> RawDataset:
    """Steam (Kang & McAuley): `australian_user_reviews.json` + `steam_games.json`, Python-literal lines.

    One interaction per review, rating 1.0 when the review has `recommend: True`, 0.0 when `False`.
    With `all_positive: true` (the paper's reading) every review is a positive; with
    `data.steam_signed: true` prepare signs by rating, so a review that does not recommend the game is a
    negative. A review date without a year becomes timestamp 0 and is counted in notes.
    """
    src = RecordFiles(cfg, root, file_roles(cfg), ast.literal_eval, "Python literal")
    undated = 0

    def review_rows(rec: dict) -> list[tuple]:
        nonlocal undated
        user = to_id(field(rec, "user_id"), "user_id")
        reviews = rec.get("reviews") or []
        if not isinstance(reviews, list):
            raise BadRecord("'reviews' is not a list")
        rows = []
        for i, rv in enumerate(reviews):
            if not isinstance(rv, dict) or rv.get("item_id") in (None, ""):
                raise BadRecord(f"review {i} has no 'item_id'")
            recommend = rv.get("recommend", True)
            if not isinstance(recommend, bool):
                raise BadRecord(f"review {i} has 'recommend' {recommend!r}, not True or False")
            rows.append((user, to_id(rv["item_id"], "item_id"), 1.0 if recommend else 0.0,
                         steam_posted(rv.get("posted"))))
        undated += sum(r[3] is None for r in rows)
        return [(u, i, r, t or 0) for u, i, r, t in rows]

    inter = src.interactions("reviews", review_rows)
    items = src.metadata("games", "id", lambda r: (
        opt_str(r.get("app_name") or r.get("title")), str_list(r.get("genres") or r.get("tags")),
        str_list(r.get("tags")), opt_str(r.get("developer")), opt_str(r.get("release_date")),
    ), {**ITEM_META, "tags": CATEGORIES, "developer": pl.String, "release_date": pl.String})
    return src.dataset(inter, pl.DataFrame(), items, {"reviews without a year (timestamp 0)": undated})

"""Turning parsed records into checked columns: ids, ratings, timestamps and item attributes, and the
record-per-line formats' files (Yelp, Amazon, Steam: one JSON or Python-literal record a line) into tables.

- Ids are kept exactly as published (spaces and unicode included); readers never filter or sign.
- Timestamps are unix seconds; dates without a time zone are read as UTC; an unknown date is 0.
- Big files (Yelp, Amazon) are streamed line by line into column chunks, so memory holds the
  kept columns only, never the review texts.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import INTERACTION_SCHEMA, RawDataset, Roles, locate, no_columns
from lagcl.data.readers.lines import Files
from lagcl.errors import DataError

if TYPE_CHECKING:
    from lagcl.data.readers.lines import LineReader

CHUNK_ROWS = 200_000  # rows buffered as Python tuples before they become a compact polars chunk
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 in unix seconds: later (or negative) timestamps are out of range

CATEGORIES = pl.List(pl.String)
ITEM_META = {"raw_id": pl.String, "title": pl.String, "categories": CATEGORIES}


class BadRecord(Exception):
    """A line that parsed but does not hold what the format promises; reported with file:line and
    counted under `reason` in lenient mode."""

    def __init__(self, why: str, reason: str = "malformed line"):
        super().__init__(why)
        self.reason = reason


def collect(reader: LineReader, records: Iterable[tuple[int, Any]], to_rows: Callable[[Any], list[tuple]],
            schema: dict[str, pl.DataType], limit: int | None = None) -> pl.DataFrame:
    """Run `to_rows` over each record and gather the rows into a DataFrame, chunk by chunk."""
    chunks, buf, done = [], [], 0
    for lineno, rec in records:
        try:
            buf.extend(to_rows(rec))
        except BadRecord as exc:
            reader.bad(lineno, str(exc), exc.reason)
            continue
        if len(buf) >= CHUNK_ROWS:
            chunks.append(pl.DataFrame(buf, schema=schema, orient="row"))
            done += len(buf)
            buf = []
        if limit is not None and done + len(buf) >= limit:
            break
    chunks.append(pl.DataFrame(buf, schema=schema, orient="row"))
    df = pl.concat(chunks, how="vertical")
    return df.head(limit) if limit is not None else df


def interactions(cfg: DataConfig, reader: LineReader, records: Iterable[tuple[int, Any]],
                 to_rows: Callable[[Any], list[tuple]]) -> pl.DataFrame:
    """An interactions file read through `reader`: `to_rows` over its records, the values `checked`, at most
    `data.max_interactions` rows, and an error when nothing is left (`finish`)."""
    inter = collect(reader, records, checked(cfg, to_rows), INTERACTION_SCHEMA, cfg.max_interactions)
    return finish(inter, reader.path, reader.skipped)


def checked(cfg: DataConfig, to_rows: Callable[[Any], list[tuple]]) -> Callable[[Any], list[tuple]]:
    """`to_rows` for interactions, with the values checked: a non-empty id, a rating inside
    `data.rating_range`, a timestamp in [0, 2100). Out of range is an error naming file:line, or with
    `data.strict: false` a skipped line counted by reason."""
    lo, hi = cfg.rating_range if cfg.rating_range is not None else (-math.inf, math.inf)

    def rows(rec: Any) -> list[tuple]:
        out = to_rows(rec)
        for user, item, rating, ts in out:
            if not user.strip() or not item.strip():
                raise BadRecord(f"an empty user or item id ({user!r}, {item!r})", "empty id")
            if not lo <= rating <= hi:
                raise BadRecord(f"rating {rating:g} is outside data.rating_range [{lo:g}, {hi:g}] (if the "
                                "dataset's scale differs, set data.rating_range)", "rating out of range")
            if not 0 <= ts < MAX_TIMESTAMP:
                raise BadRecord(f"timestamp {ts} is not a date between 1970 and 2100 in unix seconds",
                                "timestamp out of range")
        return out
    return rows


def field(rec: dict, key: str) -> Any:
    value = rec.get(key)
    if value is None or value == "":
        raise BadRecord(f"no '{key}' field")
    return value


def to_id(value: Any, what: str) -> str:
    if isinstance(value, (dict, list, tuple, bool, float)):
        raise BadRecord(f"{what} {value!r} is not an id")
    return str(value)


def to_float(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"{what} {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise BadRecord(f"{what} {value!r} is not a number")
    return out


def to_int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        out = value
    else:
        try:
            out = int(value)
        except (TypeError, ValueError):
            out = int(to_float(value, what))
    if not -2**63 <= out < 2**63:
        raise BadRecord(f"{what} {value!r} is out of range")
    return out


# Attributes are descriptive, not essential: a value of the wrong kind becomes null instead of
# failing the run (polars would reject the whole chunk).

def opt_str(value: Any) -> str | None:
    return None if value is None or isinstance(value, (list, dict, tuple)) else str(value)


def opt_float(value: Any) -> float | None:
    try:
        return to_float(value, "")
    except BadRecord:
        return None


def opt_int(value: Any) -> int | None:
    try:
        return to_int(value, "")
    except BadRecord:
        return None


def iso_timestamp(value: Any, what: str) -> int:
    """'2018-07-07 22:09:11' or '2018-07-07' -> unix seconds (UTC when no zone is given)."""
    try:
        dt = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise BadRecord(f"{what} {value!r} is not a date like 'YYYY-MM-DD HH:MM:SS'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def any_timestamp(value: Any, what: str) -> int:
    """Unix seconds as written, an ISO date, or 0 when empty."""
    if value is None or value == "":
        return 0
    try:
        return to_int(value, what)
    except BadRecord:
        return iso_timestamp(value, what)


def str_list(value: Any) -> list[str]:
    """A category value as a flat list of distinct non-empty strings, in their first order."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif str(v).strip() and str(v).strip() not in out:
            out.append(str(v).strip())

    walk(value)
    return out


def split_list(value: Any, sep: str) -> list[str]:
    if value is None:
        return []
    return str_list([p for p in str(value).split(sep)])


def metadata_rows(id_key: str, attrs: Callable[[dict], tuple], dropped: Counter, label: str):
    """`to_rows` for a metadata file: (raw_id, *attrs). A record without an id cannot be joined to any
    interaction, so it is dropped and counted in the dataset's notes rather than failing the run."""
    def to_rows(rec: dict) -> list[tuple]:
        raw = rec.get(id_key)
        if raw is None or raw == "":
            dropped[label] += 1
            return []
        return [(to_id(raw, id_key), *attrs(rec))]
    return to_rows


def dropped_notes(dropped: Counter) -> dict[str, object]:
    return {f"{name}: records without an id (dropped)": n for name, n in dropped.items()}


def finish(inter: pl.DataFrame, path: Path, skipped: int) -> pl.DataFrame:
    """An interactions file that yields nothing is an error, not an empty dataset."""
    if inter.height == 0:
        why = f" ({skipped} malformed line(s) skipped)" if skipped else ""
        raise DataError(f"{path} holds no interactions{why}; check that it is the right file and download "
                        "it again if it is truncated")
    return inter


class RecordFiles:
    """A record-per-line format's files, found by role: each line is one record read by `parse` (a line it
    cannot read is a malformed `what` line), the fields are the format's own (so `data.columns` is refused),
    and metadata records without an id are dropped and counted in the dataset's notes."""

    def __init__(self, cfg: DataConfig, root: Path, roles: tuple[Roles, Roles],
                 parse: Callable[[str], Any] = json.loads, what: str = "JSON"):
        no_columns(cfg)
        self.cfg, self.paths, self.files = cfg, locate(cfg, root, *roles), Files(cfg)
        self.parse, self.what = parse, what
        self.dropped: Counter = Counter()

    def interactions(self, role: str, to_rows: Callable[[dict], list[tuple]]) -> pl.DataFrame:
        reader = self.files(self.paths[role])
        return interactions(self.cfg, reader, reader.records(self.parse, self.what), to_rows)

    def metadata(self, role: str, id_key: str, attrs: Callable[[dict], tuple],
                 schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """(raw_id, *attrs) per record of the `role` file (`metadata_rows`)."""
        path = self.paths[role]
        reader = self.files(path)
        return collect(reader, reader.records(self.parse, self.what),
                       metadata_rows(id_key, attrs, self.dropped, path.name), schema)

    def dataset(self, inter: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame,
                notes: dict[str, object] | None = None) -> RawDataset:
        return self.files.dataset(inter, users, items, {**dropped_notes(self.dropped), **(notes or {})})

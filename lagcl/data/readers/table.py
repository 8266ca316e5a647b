"""Generic tables: your own data as CSV/TSV (header row, UTF-8, optionally .gz) or Parquet.

The format is chosen by extension: `.csv` (comma), `.tsv` (tab), `.txt` (comma), each optionally `.gz`,
with CSV quoting (`data.separator` gives another separator, e.g. ';'); `.parquet` or `.pq`. Roles `interactions` (required), `items`, `users` (optional),
named by `data.files`; `data.columns` maps canonical names to your column names.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles, column_names, locate
from lagcl.data.readers.delimited import DelimitedFile, with_categories, with_raw_id
from lagcl.data.readers.lines import Files, LineReader, Skips, first_line
from lagcl.data.readers.values import MAX_TIMESTAMP, finish
from lagcl.errors import DataError

TABLE_COLUMNS = {
    "user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp",
    "title": "title", "categories": "categories",
    "categories_sep": "|",  # when categories is a string column rather than a list
}


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return {"interactions": None}, {"items": None, "users": None}


def read_table(cfg: DataConfig, root: Path) -> RawDataset:
    """Your own data as CSV/TSV (header row, UTF-8, optionally .gz) or Parquet, chosen by extension.

    Roles: `interactions` (required), `items` and `users` (optional). `data.columns` maps canonical
    names to your column names; the items table is keyed by the item column, the users table by the
    user column. Without a rating column the data must be `all_positive`; timestamps may be unix
    seconds or ISO dates; categories a list column or a string split on `categories_sep`.
    Ids are read as text, so '007' stays '007'.
    """
    paths = locate(cfg, root, *file_roles(cfg))
    col = column_names(cfg, TABLE_COLUMNS)
    path = paths["interactions"]
    files = Files(cfg)
    if _is_parquet(path):
        inter = _parquet_interactions(path, cfg, col, files.skips)
    else:
        inter = _text_table(files(path), cfg).interactions(cfg, col)

    tables = {}
    for role, key in (("items", "item"), ("users", "user")):
        if role not in paths:
            continue
        hint = None
        if _is_parquet(paths[role]):
            t = _read_parquet(paths[role])
        else:
            text = _text_table(files(paths[role]), cfg)
            t, hint = text.frame(), text.separator_hint()
        t = with_raw_id(t, col[key], paths[role], key, hint).with_columns(pl.col("raw_id").cast(pl.String))
        if role == "items":
            if col["title"] in t.columns and col["title"] != "title":
                t = t.drop("title", strict=False).rename({col["title"]: "title"})
            if col["categories"] in t.columns:
                t = with_categories(t, col["categories"], col["categories_sep"])
        tables[role] = t
    return files.dataset(inter, tables.get("users", pl.DataFrame()), tables.get("items", pl.DataFrame()))


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _text_table(reader: LineReader, cfg: DataConfig) -> DelimitedFile:
    name = reader.path.name.lower().removesuffix(".gz")
    if not name.endswith((".csv", ".tsv", ".txt")):
        raise DataError(f"{reader.path}: the table format reads .csv, .tsv, .txt (optionally .gz) or .parquet files")
    return DelimitedFile(reader, cfg.separator or ("\t" if name.endswith(".tsv") else ","), quoted=True,
                         dataset=cfg.name)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a damaged file
        raise DataError(f"{path} is not a readable Parquet file ({first_line(exc)}); "
                        "write it again") from None


def _parquet_interactions(path: Path, cfg: DataConfig, col: dict[str, str], skips: Skips) -> pl.DataFrame:
    """Vectorised: Parquet has typed columns and no lines; a bad row is named by its row number."""
    df = _read_parquet(path)
    for need in ("user", "item"):
        if col[need] not in df.columns:
            raise DataError(f"{path}: no column '{col[need]}' for the {need} id (columns: {df.columns}); "
                            f"set data.columns.{need} in conf/data/{cfg.name}.yaml")
    if col["rating"] not in df.columns and not cfg.all_positive:
        raise DataError(f"{path} has no rating column '{col['rating']}'; set data.columns.rating "
                        "or data.all_positive=true for implicit feedback")
    rating = (pl.col(col["rating"]).cast(pl.Float64, strict=False) if col["rating"] in df.columns
              else pl.lit(1.0))
    ts, given = pl.lit(0, dtype=pl.Int64), pl.lit(False)
    if col["timestamp"] in df.columns:
        ts, given = _timestamp_expr(path, df, col["timestamp"]), pl.col(col["timestamp"]).is_not_null()
    out = df.select(
        user_raw=pl.col(col["user"]).cast(pl.String), item_raw=pl.col(col["item"]).cast(pl.String),
        rating=rating, timestamp=ts, _given=given,
    ).with_row_index("_row", offset=1)
    lo, hi = cfg.rating_range if cfg.rating_range is not None else (-math.inf, math.inf)
    empty = lambda c: pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")  # noqa: E731
    reasons = {  # the same reasons, in the same order, as `checked` gives for text lines
        "malformed line": pl.col("rating").is_null() | pl.col("rating").is_nan()
        | (pl.col("timestamp").is_null() & pl.col("_given")),
        "empty id": empty("user_raw") | empty("item_raw"),
        "rating out of range": (pl.col("rating") < lo) | (pl.col("rating") > hi),
        "timestamp out of range": (pl.col("timestamp") < 0) | (pl.col("timestamp") >= MAX_TIMESTAMP),
    }
    reason = pl.lit(None, dtype=pl.String)
    for name, cond in reversed(reasons.items()):
        reason = pl.when(cond.fill_null(False)).then(pl.lit(name)).otherwise(reason)
    out = out.with_columns(reason.alias("_reason"))
    bad_rows = out.filter(pl.col("_reason").is_not_null())
    if bad_rows.height and cfg.strict:
        first = bad_rows.row(0, named=True)
        raise DataError(f"{path}: row {first['_row']}: {df.row(first['_row'] - 1, named=True)}: {first['_reason']} "
                        f"({bad_rows.height} such rows; an id must not be empty, a rating must be a number inside "
                        "data.rating_range, a timestamp a date between 1970 and 2100); fix them, or set "
                        "data.strict=false to skip them and count them")
    for row, why in bad_rows.select("_row", "_reason").iter_rows():
        skips.add(why, f"{path.name}:row {row}")
    inter = out.filter(pl.col("_reason").is_null()).with_columns(pl.col("timestamp").fill_null(0))
    inter = inter.drop("_row", "_given", "_reason")
    if cfg.max_interactions is not None:
        inter = inter.head(cfg.max_interactions)
    return finish(inter, path, bad_rows.height)


def _timestamp_expr(path: Path, df: pl.DataFrame, name: str) -> pl.Expr:
    dtype, c = df.schema[name], pl.col(name)
    if dtype.is_integer() or dtype.is_float():
        return c.cast(pl.Int64, strict=False)
    if dtype == pl.Date:
        return c.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return c.dt.epoch("s")
    if dtype == pl.String:
        return pl.coalesce(c.cast(pl.Int64, strict=False),
                           c.str.to_datetime(strict=False).dt.epoch("s"))
    raise DataError(f"{path}: timestamp column '{name}' has type {dtype}; use unix seconds, a date or a datetime")

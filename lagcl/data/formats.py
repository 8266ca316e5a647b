"""Raw-format readers: each turns a dataset's published files into a RawDataset.

`READERS[format]` is `(cfg, root) -> RawDataset`. Readers check every file before reading any, so a
missing file is reported with all the others and where the dataset is published. Malformed lines
are an error with file and line number, or (with `strict: false`) skipped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.raw import RawDataset, require_files
from lagcl.errors import DataError


class LineReader:
    """Reads a delimited text file line by line, counting or raising on malformed lines."""

    def __init__(self, path: Path, strict: bool, encoding: str = "utf-8"):
        self.path = path
        self.strict = strict
        self.encoding = encoding
        self.skipped = 0

    def bad(self, lineno: int, why: str) -> None:
        if self.strict:
            raise DataError(f"{self.path}:{lineno}: {why} (fix the line, or set data.strict=false to skip "
                            "malformed lines and count them)")
        self.skipped += 1

    def lines(self, skip_header: bool = False) -> Iterator[tuple[int, str]]:
        try:
            with open(self.path, encoding=self.encoding, newline="") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if skip_header and lineno == 1:
                        continue
                    line = line.rstrip("\r\n")
                    if line.strip():
                        yield lineno, line
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path} is not valid {self.encoding} text ({exc.reason} at byte {exc.start}); "
                            "re-download it or convert it to UTF-8") from None

    def rows(self, sep: str, n_fields: int, skip_header: bool = False) -> Iterator[tuple[int, list[str]]]:
        for lineno, line in self.lines(skip_header):
            parts = line.split(sep)
            if len(parts) != n_fields:
                self.bad(lineno, f"expected {n_fields} fields separated by {sep!r}, found {len(parts)}")
                continue
            yield lineno, parts


def to_float(reader: LineReader, lineno: int, value: str, what: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        reader.bad(lineno, f"{what} {value!r} is not a number")
        return None


# --- RecBole atomic files -------------------------------------------------------------------------

def _atomic_table(path: Path, strict: bool) -> tuple[list[str], list[str], list[list[str]], int]:
    """Header names, header types and rows of one atomic file (tab separated, `name:type` header)."""
    reader = LineReader(path, strict)
    lines = reader.lines()
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(f"{path} has no header line; atomic files start with `field:type` columns") from None
    fields = header.split("\t")
    names, types = [], []
    for f in fields:
        if ":" not in f:
            raise DataError(f"{path}:1: header field {f!r} is not `name:type` (RecBole atomic format)")
        n, t = f.rsplit(":", 1)
        names.append(n)
        types.append(t)
    rows = []
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) != len(names):
            reader.bad(lineno, f"expected {len(names)} tab-separated fields, found {len(parts)}")
            continue
        rows.append(parts)
    return names, types, rows, reader.skipped


def read_atomic(cfg: DataConfig, root: Path) -> RawDataset:
    """RecBole atomic files: `<name>.inter` (+ optional `.item`, `.user`).

    `data.columns` maps canonical names (user, item, rating, timestamp, title, categories) to the
    file's field names; defaults are RecBole's user_id, item_id, rating, timestamp.
    """
    files = {"inter": cfg.files.get("inter", f"{cfg.name}.inter")}
    paths = require_files(root, files, cfg.name, cfg.published_at)
    optional = {r: root / cfg.files.get(r, f"{cfg.name}.{r}") for r in ("item", "user")}
    col = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp",
           "title": "movie_title", "categories": "class", **cfg.columns}

    names, _, rows, skipped = _atomic_table(paths["inter"], cfg.strict)
    for need in ("user", "item"):
        if col[need] not in names:
            raise DataError(f"{paths['inter']}: no field '{col[need]}' for the {need} id (fields: {names}); "
                            f"set data.columns.{need} in conf/data/{cfg.name}.yaml")
    idx = {n: i for i, n in enumerate(names)}
    reader = LineReader(paths["inter"], cfg.strict)
    users, items, ratings, times = [], [], [], []
    for lineno, r in enumerate(rows, start=2):
        rating = 1.0
        if col["rating"] in idx:
            rating = to_float(reader, lineno, r[idx[col["rating"]]], "rating")
            if rating is None:
                continue
        elif not cfg.all_positive:
            raise DataError(f"{paths['inter']} has no rating field '{col['rating']}'; set data.columns.rating "
                            "or data.all_positive=true for implicit feedback")
        ts = 0
        if col["timestamp"] in idx:
            t = to_float(reader, lineno, r[idx[col["timestamp"]]], "timestamp")
            ts = int(t) if t is not None else 0
        users.append(r[idx[col["user"]]])
        items.append(r[idx[col["item"]]])
        ratings.append(rating)
        times.append(ts)
    inter = pl.DataFrame({"user_raw": users, "item_raw": items, "rating": ratings, "timestamp": times})

    items_df = pl.DataFrame()
    if optional["item"].is_file():
        n, t, rws, s = _atomic_table(optional["item"], cfg.strict)
        skipped += s
        data = {name: [r[i] for r in rws] for i, name in enumerate(n)}
        df = pl.DataFrame(data, schema={k: pl.String for k in n})
        ren = {col["item"]: "raw_id"}
        if col["title"] in df.columns:
            ren[col["title"]] = "title"
        df = df.rename(ren)
        if col["categories"] in df.columns:
            df = df.with_columns(pl.col(col["categories"]).str.split(" ").alias("categories"))
            if col["categories"] != "categories":
                df = df.drop(col["categories"])
        items_df = df
    users_df = pl.DataFrame()
    if optional["user"].is_file():
        n, t, rws, s = _atomic_table(optional["user"], cfg.strict)
        skipped += s
        data = {name: [r[i] for r in rws] for i, name in enumerate(n)}
        users_df = pl.DataFrame(data, schema={k: pl.String for k in n}).rename({col["user"]: "raw_id"})
    return RawDataset(inter, users_df, items_df, skipped_lines=skipped + reader.skipped)


def read_ml100k(cfg: DataConfig, root: Path) -> RawDataset:
    """ML-100K as shipped in the recbole==1.2.1 wheel (fetched into cache/raw by lagcl.data.fetch)."""
    from lagcl.data.fetch import ensure_ml100k

    ensure_ml100k(root)
    ds = read_atomic(cfg.model_copy(update={"name": "ml-100k"}), root)
    if "release_year" in ds.items.columns:
        ds.items = ds.items.rename({"release_year": "year"})
    return ds


READERS: dict[str, Callable[[DataConfig, Path], RawDataset]] = {
    "ml-100k": read_ml100k,
    "atomic": read_atomic,
}


def read_raw(cfg: DataConfig, repo_root: Path) -> RawDataset:
    root = Path(cfg.path)
    if not root.is_absolute():
        root = repo_root / root
    reader = READERS.get(cfg.format)
    if reader is None:
        raise DataError(f"no reader for format '{cfg.format}' yet; available: {', '.join(sorted(READERS))}")
    ds = reader(cfg, root)
    if cfg.max_interactions is not None:
        ds.interactions = ds.interactions.head(cfg.max_interactions)
    return ds

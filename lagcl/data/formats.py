"""Raw-format readers: each turns a dataset's published files into a RawDataset.

`READERS[format]` is `(cfg, root) -> RawDataset`. Conventions shared by every reader:

- Files are found by role (`data.files` maps role -> file name; each reader has default names).
  Required files are checked before any is read, so a missing file is reported with all the others
  and where the dataset is published. An optional file (user attributes, say) is read when it is
  there, and becomes required when `data.files` names it.
- A file whose name ends in `.gz` is read through gzip; everything else as plain text, in the format's
  published encoding or `data.encoding`. A UTF-8 byte-order mark is dropped by every reader (and means
  UTF-8); a line that does not decode is an error naming file:line, the byte offset and data.encoding.
- Malformed lines (bad JSON, wrong field count, a rating that is not a number, a missing id, a CSV quote
  never closed) and values out of range (an empty id, a rating outside `data.rating_range`, a timestamp
  outside 1970-2100) are an error naming file:line, or with `data.strict: false` skipped and counted by
  reason with their first three places (`RawDataset.skipped`, the prepare manifest's stats).
- Ids are kept exactly as published (spaces and unicode included); readers never filter or sign.
- Timestamps are unix seconds; dates without a time zone are read as UTC; an unknown date is 0.
- Big files (Yelp, Amazon) are streamed line by line into column chunks, so memory holds the
  kept columns only, never the review texts.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import json
import math
import re
import zlib
from collections import Counter, deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.raw import RawDataset, require_files
from lagcl.errors import DataError

CHUNK_ROWS = 200_000  # rows buffered as Python tuples before they become a compact polars chunk

INTER_SCHEMA = {"user_raw": pl.String, "item_raw": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}
CATEGORIES = pl.List(pl.String)


# --- reading text files ---------------------------------------------------------------------------

MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 in unix seconds: later (or negative) timestamps are out of range


class Skips:
    """Lines skipped in lenient mode (`data.strict: false`), by reason: how many, and the first three places
    (`file:line`), so a skip is never silent. One per dataset, shared by the readers of its files."""

    def __init__(self) -> None:
        self.by_reason: dict[str, dict[str, Any]] = {}

    def add(self, reason: str, where: str) -> None:
        entry = self.by_reason.setdefault(reason, {"count": 0, "first_lines": []})
        entry["count"] += 1
        if len(entry["first_lines"]) < 3:
            entry["first_lines"].append(where)

    @property
    def total(self) -> int:
        return sum(e["count"] for e in self.by_reason.values())


class LineReader:
    """Reads a (possibly gzipped) text file line by line, counting or raising on malformed lines.

    Lines are decoded one by one, so a decoding error names its line and byte offset. A UTF-8 byte-order
    mark is dropped whatever `encoding` says (it marks the file as UTF-8); a UTF-16/32 one is an error."""

    def __init__(self, path: Path, strict: bool, encoding: str = "utf-8", skips: Skips | None = None):
        self.path = path
        self.strict = strict
        self.encoding = encoding
        self.skips = skips if skips is not None else Skips()
        self.skipped = 0

    def bad(self, lineno: int, why: str, reason: str = "malformed line") -> None:
        if self.strict:
            raise DataError(f"{self.path}:{lineno}: {why} (fix the line, or set data.strict=false to skip "
                            "such lines and count them)")
        self.skipped += 1
        self.skips.add(reason, f"{self.path.name}:{lineno}")

    @contextmanager
    def open(self) -> Iterator[Iterator[str]]:
        """The file's decoded lines (line endings kept); decoding and gzip errors become a DataError that
        names the file."""
        try:
            fh = gzip.open(self.path, "rb") if self.path.name.endswith(".gz") else open(self.path, "rb")
            with fh:
                yield self._decoded(fh)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{self.path} is not a complete gzip file ({exc}); download it again, or "
                            "drop the .gz from its name if it is plain text") from None
        except OSError as exc:
            raise DataError(f"cannot read {self.path}: {exc.strerror or exc}; check its permissions") from None

    def _decoded(self, fh: Iterable[bytes]) -> Iterator[str]:
        encoding, offset = self.encoding, 0
        for lineno, raw in enumerate(fh, start=1):
            start = 0
            if lineno == 1:
                if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE,
                                   codecs.BOM_UTF16_BE)):
                    raise DataError(f"{self.path} is UTF-16 or UTF-32 text (it starts with such a byte-order "
                                    "mark); convert it to UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`")
                if raw.startswith(codecs.BOM_UTF8):
                    encoding, start = "utf-8", len(codecs.BOM_UTF8)
            try:
                line = raw[start:].decode(encoding)
            except UnicodeDecodeError as exc:
                name = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
                raise DataError(
                    f"{self.path}:{lineno}: not valid {name} text ({exc.reason} at byte offset "
                    f"{offset + start + exc.start} of the file); set data.encoding to the file's encoding "
                    f"(e.g. data.encoding=latin-1 or cp1252) or convert the file to {name}") from None
            offset += len(raw)
            yield line

    def lines(self, skip_header: bool = False) -> Iterator[tuple[int, str]]:
        with self.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                if skip_header and lineno == 1:
                    continue
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line

    def rows(self, sep: str, n_fields: int, skip_header: bool = False) -> Iterator[tuple[int, list[str]]]:
        for lineno, line in self.lines(skip_header):
            parts = line.split(sep)
            if len(parts) != n_fields:
                self.bad(lineno, f"expected {n_fields} fields separated by {sep!r}, found {len(parts)}")
                continue
            yield lineno, parts

    def records(self, parse: Callable[[str], Any], what: str) -> Iterator[tuple[int, dict]]:
        """One dict per line (JSON lines, or Python-literal lines with `ast.literal_eval`)."""
        for lineno, line in self.lines():
            try:
                rec = parse(line)
            except PARSE_ERRORS as exc:
                self.bad(lineno, f"not a valid {what} line ({first_line(exc)})")
                continue
            if not isinstance(rec, dict):
                self.bad(lineno, f"expected one {what} mapping per line, found {type(rec).__name__}")
                continue
            yield lineno, rec


class Files:
    """Opens a dataset's files as LineReaders that share one Skips, with the dataset's strictness and
    encoding (`data.encoding`, else the format's published one)."""

    def __init__(self, cfg: DataConfig, encoding: str = "utf-8"):
        self.strict, self.encoding, self.skips = cfg.strict, cfg.encoding or encoding, Skips()

    def __call__(self, path: Path) -> LineReader:
        return LineReader(path, self.strict, self.encoding, self.skips)

    def dataset(self, inter: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame,
                notes: dict[str, object] | None = None) -> RawDataset:
        return RawDataset(inter, users, items, skipped_lines=self.skips.total, skipped=self.skips.by_reason,
                          notes=notes or {})


PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:160]


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


# --- turning records into columns -----------------------------------------------------------------

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


def finish(inter: pl.DataFrame, path: Path, skipped: int) -> pl.DataFrame:
    """An interactions file that yields nothing is an error, not an empty dataset."""
    if inter.height == 0:
        why = f" ({skipped} malformed line(s) skipped)" if skipped else ""
        raise DataError(f"{path} holds no interactions{why}; check that it is the right file and download "
                        "it again if it is truncated")
    return inter


# --- locating files --------------------------------------------------------------------------------

def locate(cfg: DataConfig, root: Path, required: dict[str, str | None],
           optional: dict[str, str | None] | None = None) -> dict[str, Path]:
    """role -> path. Required roles must exist (one error for all); optional roles are read when their
    file is there, and are required when `data.files` names them. A default of None means the role
    has no standard file name, so `data.files` must give it."""
    optional = optional or {}
    unknown = sorted(set(cfg.files) - set(required) - set(optional))
    if unknown:
        raise DataError(f"data.files has role(s) {unknown} that format '{cfg.format}' does not read; "
                        f"its roles are: {', '.join([*required, *optional])}")
    unnamed = [r for r, default in required.items() if default is None and r not in cfg.files]
    if unnamed:
        raise DataError(f"format '{cfg.format}' needs the file name of role(s) {unnamed}: set "
                        + ", ".join(f"data.files.{r}" for r in unnamed) + f" in conf/data/{cfg.name}.yaml")
    names = {**{r: d for r, d in {**required, **optional}.items() if d is not None}, **cfg.files}
    must = {r: n for r, n in names.items() if r in required or r in cfg.files}
    paths = require_files(root, must, cfg.name, cfg.published_at)
    for role in optional:
        if role not in paths and role in names:
            p = root / names[role]
            if p.is_file() and p.stat().st_size > 0:
                paths[role] = p
    return paths


def column_names(cfg: DataConfig, defaults: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(cfg.columns) - set(defaults))
    if unknown:
        raise DataError(f"data.columns has key(s) {unknown} that format '{cfg.format}' does not use; "
                        f"its keys are: {', '.join(defaults)}")
    return {**defaults, **cfg.columns}


def no_columns(cfg: DataConfig) -> None:
    if cfg.columns:
        raise DataError(f"data.columns is set, but format '{cfg.format}' has fixed field names; "
                        "data.columns is read by the 'atomic' and 'table' formats only")


# --- RecBole atomic files --------------------------------------------------------------------------

ATOMIC_COLUMNS = {
    "user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp",
    # RecBole's processed datasets name these differently (ml: movie_title/genre or class,
    # yelp: item_name/categories, amazon: title/categories, steam: app_name/genres); the first
    # field present is used unless data.columns names one.
    "title": "movie_title|title|item_name|app_name",
    "categories": "class|genre|categories|genres",
    "categories_sep": " ",  # token_seq fields are space separated
    "items_id": "",  # the .item file's id field when it differs from the .inter one (steam: id)
    "users_id": "",
}


class DelimitedFile:
    """A text table with a header line: its column names and its rows, streamed with line numbers.

    `sep` splits fields (RecBole atomic files: tab, names written `name:type`); `quoted` reads CSV
    quoting, where a field may hold the separator or a line break."""

    def __init__(self, reader: LineReader, sep: str, quoted: bool = False, atomic: bool = False):
        self.reader, path = reader, reader.path
        self.path, self.sep, self.quoted = path, sep, quoted
        self.n_fields: int | None = None  # known once the header is read
        self._lines = self._split()
        try:
            _, header = next(self._lines)
        except StopIteration:
            raise DataError(f"{path} has no header line; its first line must name the columns"
                            + (" as `field:type`" if atomic else "")) from None
        if atomic:
            for f in header:
                if ":" not in f:
                    raise DataError(f"{path}:1: header field {f!r} is not `name:type` (RecBole atomic format)")
            header = [f.rsplit(":", 1)[0] for f in header]
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: the header repeats a column name: {header}")
        self.columns: list[str] = header
        self.n_fields = len(header)

    def _split(self) -> Iterator[tuple[int, list[str]]]:
        if not self.quoted:
            for lineno, line in self.reader.lines():
                yield lineno, line.split(self.sep)
            return
        with self.reader.open() as fh:
            yield from self._csv_rows(fh)

    def _csv_rows(self, fh: Iterator[str]) -> Iterator[tuple[int, list[str]]]:
        """CSV records with the line each starts on. A record that runs over several lines and then has the
        wrong number of fields (or breaks CSV) is a quote opened and never closed: it is reported at the line
        where it opened, and in lenient mode only that line is skipped: the lines it swallowed are read again."""
        src = _Replayable(fh)
        pending, taken = src.pending, src.taken
        while True:
            it = csv.reader(src, delimiter=self.sep)
            while True:
                taken.clear()
                error = None
                try:
                    parts = next(it)
                except StopIteration:
                    return
                except csv.Error as exc:
                    error, parts = str(exc), []
                if not taken:
                    return
                start, end = taken[0][0], taken[-1][0]
                wrong = self.n_fields is not None and len(parts) != self.n_fields
                if end > start and (error or wrong):
                    self.reader.bad(start, f"a quoted field opens on this line and is not closed where the row should "
                                    f"end (the row runs to line {end}); close the quote, or write a quote inside a "
                                    'quoted field as ""', "unclosed quote")
                    pending.extendleft(reversed(taken[1:]))
                    break  # a fresh CSV reader from the line after the opening one
                if error:
                    self.reader.bad(start, f"not valid CSV ({error})", "malformed line")
                    continue
                if any(p.strip() for p in parts):
                    yield start, parts

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Rows with as many fields as the header; others are malformed lines."""
        n = len(self.columns)
        for lineno, parts in self._lines:
            if len(parts) != n:
                self.reader.bad(lineno, f"expected {n} fields separated by {self.sep!r}, found {len(parts)}")
                continue
            yield lineno, parts

    def frame(self) -> pl.DataFrame:
        """The whole file as String columns (attribute tables)."""
        return collect(self.reader, self.rows(), lambda p: [tuple(p)], {c: pl.String for c in self.columns})

    def interactions(self, cfg: DataConfig, col: dict[str, str]) -> pl.DataFrame:
        """user, item, rating, timestamp from the columns `col` names; no rating column means rating 1.0
        (implicit feedback, only with all_positive); no timestamp column, or an empty value, means 0."""
        idx = {c: i for i, c in enumerate(self.columns)}
        for need in ("user", "item"):
            if col[need] not in idx:
                raise DataError(f"{self.path}: no column '{col[need]}' for the {need} id (columns: {self.columns}); "
                                f"set data.columns.{need} in conf/data/{cfg.name}.yaml")
        if col["rating"] not in idx and not cfg.all_positive:
            raise DataError(f"{self.path} has no rating column '{col['rating']}'; set data.columns.rating "
                            "or data.all_positive=true for implicit feedback")
        u, i = idx[col["user"]], idx[col["item"]]
        r, t = idx.get(col["rating"]), idx.get(col["timestamp"])

        def to_rows(p: list[str]) -> list[tuple]:
            if p[u] == "" or p[i] == "":
                raise BadRecord("empty user or item id")
            rating = 1.0 if r is None else to_float(p[r], col["rating"])
            return [(p[u], p[i], rating, 0 if t is None else any_timestamp(p[t], col["timestamp"]))]

        inter = collect(self.reader, self.rows(), checked(cfg, to_rows), INTER_SCHEMA, cfg.max_interactions)
        return finish(inter, self.path, self.reader.skipped)


class _Replayable:
    """The lines of a file with their numbers, for csv.reader; lines put in `pending` are read again (with
    their own numbers) before the file goes on, and `taken` lists the lines read since it was cleared. Unlike
    a generator it can be read again after the file's end, when `pending` is refilled."""

    def __init__(self, fh: Iterator[str]):
        self.fh, self.lineno = fh, 0
        self.pending: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []

    def __iter__(self) -> "_Replayable":
        return self

    def __next__(self) -> str:
        if self.pending:
            n, line = self.pending.popleft()
        else:
            line = next(self.fh)  # StopIteration at the end of the file
            self.lineno += 1
            n = self.lineno
        self.taken.append((n, line))
        return line


def any_timestamp(value: Any, what: str) -> int:
    """Unix seconds as written, an ISO date, or 0 when empty."""
    if value is None or value == "":
        return 0
    try:
        return to_int(value, what)
    except BadRecord:
        return iso_timestamp(value, what)


def _pick(wanted: str, fields: list[str]) -> str | None:
    return next((f for f in wanted.split("|") if f in fields), None)


def read_atomic(cfg: DataConfig, root: Path) -> RawDataset:
    """RecBole atomic files: `<name>.inter` (+ optional `<name>.item`, `<name>.user`).

    `data.columns` maps canonical names (user, item, rating, timestamp, title, categories) to the
    files' field names; without a rating field the dataset must be `all_positive` (rating 1.0).
    """
    paths = locate(cfg, root, *FILE_ROLES["atomic"](cfg))
    col = column_names(cfg, ATOMIC_COLUMNS)
    files = Files(cfg)
    table = DelimitedFile(files(paths["inter"]), "\t", atomic=True)
    inter = table.interactions(cfg, col)

    items = pl.DataFrame()
    if "item" in paths:
        table = DelimitedFile(files(paths["item"]), "\t", atomic=True)
        items = _with_raw_id(table.frame(), col["items_id"] or col["item"], paths["item"], "items_id")
        title = _pick(col["title"], items.columns)
        if title and title != "title":
            items = items.drop("title", strict=False).rename({title: "title"})
        cats = _pick(col["categories"], items.columns)
        if cats:
            items = _categories(items, cats, col["categories_sep"])
    users = pl.DataFrame()
    if "user" in paths:
        table = DelimitedFile(files(paths["user"]), "\t", atomic=True)
        users = _with_raw_id(table.frame(), col["users_id"] or col["user"], paths["user"], "users_id")
    return files.dataset(inter, users, items)


def _with_raw_id(df: pl.DataFrame, id_field: str, path: Path, key: str) -> pl.DataFrame:
    if id_field not in df.columns:
        raise DataError(f"{path}: no id column '{id_field}' (columns: {df.columns}); set data.columns.{key}")
    return df.drop("raw_id", strict=False).rename({id_field: "raw_id"})


def _categories(items: pl.DataFrame, column: str, sep: str) -> pl.DataFrame:
    """`column` (a list, or a string split on `sep`) as the canonical `categories` list[str]."""
    c = pl.col(column)
    if items.schema[column] == pl.String:
        c = c.str.split(sep).list.eval(pl.element().str.strip_chars())
    c = c.cast(CATEGORIES).list.eval(pl.element().filter(pl.element() != "")).fill_null([])
    return items.with_columns(c.alias("_categories")).drop(column).rename({"_categories": "categories"})


def read_ml100k(cfg: DataConfig, root: Path) -> RawDataset:
    """ML-100K as shipped in the recbole==1.2.1 wheel (fetched into cache/raw by lagcl.data.fetch)."""
    from lagcl.data.fetch import ensure_ml100k

    ensure_ml100k(root)
    ds = read_atomic(cfg.model_copy(update={"name": "ml-100k"}), root)
    if "release_year" in ds.items.columns:
        ds.items = ds.items.rename({"release_year": "year"})
    return ds


# --- MovieLens 1M (ratings.dat, users.dat, movies.dat) ---------------------------------------------

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # the codes 0-20 of the dataset's README, so profiles read words rather than numbers
TITLE_YEAR = re.compile(r"^(.*\S)\s*\((\d{4})\)\s*$")


def read_ml1m(cfg: DataConfig, root: Path) -> RawDataset:
    """MovieLens 1M: `::` separated, latin-1. Titles 'Name (Year)' become title + year."""
    no_columns(cfg)
    paths = locate(cfg, root, *FILE_ROLES["ml-1m"](cfg))
    files = Files(cfg, encoding="latin-1")

    reader = files(paths["ratings"])
    inter = collect(reader, reader.rows("::", 4), checked(cfg, lambda p: [
        (ml1m_id(p[0], "UserID"), ml1m_id(p[1], "MovieID"), to_float(p[2], "rating"), to_int(p[3], "timestamp"))]),
        INTER_SCHEMA, cfg.max_interactions)
    inter = finish(inter, paths["ratings"], reader.skipped)

    def user_row(p: list[str]) -> list[tuple]:
        code = to_int(p[3], "occupation")
        occupation = ML1M_OCCUPATIONS[code] if 0 <= code < len(ML1M_OCCUPATIONS) else str(code)
        return [(p[0], p[1], to_int(p[2], "age"), occupation, p[4])]

    reader = files(paths["users"])
    users = collect(reader, reader.rows("::", 5), user_row, {
        "raw_id": pl.String, "gender": pl.String, "age": pl.Int64, "occupation": pl.String, "zip_code": pl.String})

    def movie_row(p: list[str]) -> list[tuple]:
        m = TITLE_YEAR.match(p[1])
        title, year = (m.group(1), int(m.group(2))) if m else (p[1].strip(), None)
        return [(p[0], title, year, split_list(p[2], "|"))]

    reader = files(paths["movies"])
    items = collect(reader, reader.rows("::", 3), movie_row, {
        "raw_id": pl.String, "title": pl.String, "year": pl.Int64, "categories": CATEGORIES})
    return files.dataset(inter, users, items)


def ml1m_id(value: str, what: str) -> str:
    """ML-1M's README: UserIDs range between 1 and 6040, MovieIDs between 1 and 3952 (positive integers)."""
    if not value.isdigit() or int(value) < 1:
        raise BadRecord(f"{what} {value!r} is not a positive integer as the ML-1M README defines it", "id out of range")
    return value


# --- Yelp Open Dataset (JSON lines) ----------------------------------------------------------------

def read_yelp(cfg: DataConfig, root: Path) -> RawDataset:
    """Yelp Open Dataset: reviews (stars, date) + businesses (name, 'A, B' categories, city, state)
    + users (a few scalar attributes; optional, the file is large and only adds attributes)."""
    no_columns(cfg)
    paths = locate(cfg, root, *FILE_ROLES["yelp"](cfg))
    files = Files(cfg)
    dropped: Counter = Counter()

    reader = files(paths["reviews"])
    inter = collect(reader, reader.records(json.loads, "JSON"), checked(cfg, lambda r: [(
        to_id(field(r, "user_id"), "user_id"), to_id(field(r, "business_id"), "business_id"),
        to_float(field(r, "stars"), "stars"), iso_timestamp(field(r, "date"), "date"))]),
        INTER_SCHEMA, cfg.max_interactions)
    inter = finish(inter, paths["reviews"], reader.skipped)

    reader = files(paths["businesses"])
    items = collect(reader, reader.records(json.loads, "JSON"), metadata_rows("business_id", lambda r: (
        opt_str(r.get("name")), split_list(r.get("categories"), ","), opt_str(r.get("city")),
        opt_str(r.get("state")), opt_float(r.get("stars")), opt_int(r.get("review_count"))),
        dropped, paths["businesses"].name), {
        "raw_id": pl.String, "title": pl.String, "categories": CATEGORIES, "city": pl.String,
        "state": pl.String, "stars": pl.Float64, "review_count": pl.Int64})

    users = pl.DataFrame()
    if "users" in paths:
        reader = files(paths["users"])
        users = collect(reader, reader.records(json.loads, "JSON"), metadata_rows("user_id", lambda r: (
            opt_int(r.get("review_count")), opt_float(r.get("average_stars")), opt_int(r.get("fans")),
            opt_str(r.get("yelping_since"))),
            dropped, paths["users"].name), {
            "raw_id": pl.String, "review_count": pl.Int64, "average_stars": pl.Float64, "fans": pl.Int64,
            "yelping_since": pl.String})
    return files.dataset(inter, users, items, _dropped_notes(dropped))


def _dropped_notes(dropped: Counter) -> dict[str, object]:
    return {f"{name}: records without an id (dropped)": n for name, n in dropped.items()}


# --- Amazon reviews (2018 and 2023 releases) -------------------------------------------------------

ITEM_META = {"raw_id": pl.String, "title": pl.String, "categories": CATEGORIES}


def read_amazon2018(cfg: DataConfig, root: Path) -> RawDataset:
    """Amazon 2018 (McAuley lab): `<Category>.json.gz` reviews + `meta_<Category>.json.gz`.

    Reviews: reviewerID, asin, overall (1-5), unixReviewTime. Metadata: asin, title, category (a list;
    the 2014 release's `categories` list of lists is flattened), brand, main_cat. Lines may be JSON or,
    as in the 2014 release, Python literals.
    """
    no_columns(cfg)
    paths = locate(cfg, root, *FILE_ROLES[cfg.format](cfg))
    files = Files(cfg)
    dropped: Counter = Counter()

    reader = files(paths["reviews"])
    inter = collect(reader, reader.records(json_or_literal, "JSON"), checked(cfg, lambda r: [(
        to_id(field(r, "reviewerID"), "reviewerID"), to_id(field(r, "asin"), "asin"),
        to_float(field(r, "overall"), "overall"), to_int(field(r, "unixReviewTime"), "unixReviewTime"))]),
        INTER_SCHEMA, cfg.max_interactions)
    inter = finish(inter, paths["reviews"], reader.skipped)

    reader = files(paths["meta"])
    items = collect(reader, reader.records(json_or_literal, "JSON"), metadata_rows("asin", lambda r: (
        opt_str(r.get("title")),
        str_list(r.get("category") if r.get("category") is not None else r.get("categories")),
        opt_str(r.get("brand")), opt_str(r.get("main_cat")),
    ), dropped, paths["meta"].name), {**ITEM_META, "brand": pl.String, "main_category": pl.String})
    return files.dataset(inter, pl.DataFrame(), items, _dropped_notes(dropped))


def read_amazon2023(cfg: DataConfig, root: Path) -> RawDataset:
    """Amazon Reviews 2023 (McAuley lab): `<Category>.jsonl` reviews + `meta_<Category>.jsonl`.

    Reviews: user_id, parent_asin (the item: variants of one product share it), rating, timestamp
    in milliseconds (stored here in seconds like every other format). Metadata: parent_asin, title,
    categories, main_category, store.
    """
    no_columns(cfg)
    paths = locate(cfg, root, *FILE_ROLES[cfg.format](cfg))
    files = Files(cfg)
    dropped: Counter = Counter()

    reader = files(paths["reviews"])
    inter = collect(reader, reader.records(json.loads, "JSON"), checked(cfg, lambda r: [(
        to_id(field(r, "user_id"), "user_id"), to_id(field(r, "parent_asin"), "parent_asin"),
        to_float(field(r, "rating"), "rating"), to_int(field(r, "timestamp"), "timestamp") // 1000)]),
        INTER_SCHEMA, cfg.max_interactions)
    inter = finish(inter, paths["reviews"], reader.skipped)

    reader = files(paths["meta"])
    items = collect(reader, reader.records(json.loads, "JSON"), metadata_rows("parent_asin", lambda r: (
        opt_str(r.get("title")), str_list(r.get("categories")), opt_str(r.get("main_category")),
        opt_str(r.get("store")), opt_float(r.get("average_rating")),
    ), dropped, paths["meta"].name), {**ITEM_META, "main_category": pl.String, "store": pl.String,
                                      "average_rating": pl.Float64})
    return files.dataset(inter, pl.DataFrame(), items, _dropped_notes(dropped))


# --- Steam (McAuley lab, Australian user reviews) -----------------------------------------------

MONTHS = {m: i for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                      "september", "october", "november", "december"), start=1)}
POSTED = re.compile(r"^\s*Posted\s+([A-Za-z]+)\s+(\d{1,2})(?:\s*,\s*(\d{4}))?\s*\.?\s*$")


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
    no_columns(cfg)
    paths = locate(cfg, root, *FILE_ROLES["steam"](cfg))
    files = Files(cfg)
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

    reader = files(paths["reviews"])
    inter = collect(reader, reader.records(ast.literal_eval, "Python literal"), checked(cfg, review_rows),
                    INTER_SCHEMA, cfg.max_interactions)
    inter = finish(inter, paths["reviews"], reader.skipped)

    dropped: Counter = Counter()
    reader = files(paths["games"])
    items = collect(reader, reader.records(ast.literal_eval, "Python literal"), metadata_rows("id", lambda r: (
        opt_str(r.get("app_name") or r.get("title")), str_list(r.get("genres") or r.get("tags")),
        str_list(r.get("tags")), opt_str(r.get("developer")), opt_str(r.get("release_date")),
    ), dropped, paths["games"].name), {**ITEM_META, "tags": CATEGORIES, "developer": pl.String,
                                       "release_date": pl.String})
    notes = _dropped_notes(dropped)
    notes["reviews without a year (timestamp 0)"] = undated
    return files.dataset(inter, pl.DataFrame(), items, notes)


# --- generic tables (CSV, TSV, Parquet) -------------------------------------------------------------

TABLE_COLUMNS = {
    "user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp",
    "title": "title", "categories": "categories",
    "categories_sep": "|",  # when categories is a string column rather than a list
}


def read_table(cfg: DataConfig, root: Path) -> RawDataset:
    """Your own data as CSV/TSV (header row, UTF-8, optionally .gz) or Parquet, chosen by extension.

    Roles: `interactions` (required), `items` and `users` (optional). `data.columns` maps canonical
    names to your column names; the items table is keyed by the item column, the users table by the
    user column. Without a rating column the data must be `all_positive`; timestamps may be unix
    seconds or ISO dates; categories a list column or a string split on `categories_sep`.
    Ids are read as text, so '007' stays '007'.
    """
    paths = locate(cfg, root, *FILE_ROLES["table"](cfg))
    col = column_names(cfg, TABLE_COLUMNS)
    path = paths["interactions"]
    files = Files(cfg)
    if _is_parquet(path):
        inter = _parquet_interactions(path, cfg, col, files.skips)
    else:
        inter = _text_table(files(path)).interactions(cfg, col)

    tables = {}
    for role, key in (("items", "item"), ("users", "user")):
        if role not in paths:
            continue
        if _is_parquet(paths[role]):
            t = _read_parquet(paths[role])
        else:
            t = _text_table(files(paths[role])).frame()
        t = _with_raw_id(t, col[key], paths[role], key).with_columns(pl.col("raw_id").cast(pl.String))
        if role == "items":
            if col["title"] in t.columns and col["title"] != "title":
                t = t.drop("title", strict=False).rename({col["title"]: "title"})
            if col["categories"] in t.columns:
                t = _categories(t, col["categories"], col["categories_sep"])
        tables[role] = t
    return files.dataset(inter, tables.get("users", pl.DataFrame()), tables.get("items", pl.DataFrame()))


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _text_table(reader: LineReader) -> DelimitedFile:
    name = reader.path.name.lower().removesuffix(".gz")
    if not name.endswith((".csv", ".tsv", ".txt")):
        raise DataError(f"{reader.path}: the table format reads .csv, .tsv, .txt (optionally .gz) or .parquet files")
    return DelimitedFile(reader, "\t" if name.endswith(".tsv") else ",", quoted=True)


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


Roles = dict[str, str | None]

# format -> (required roles, optional roles), each role -> default file name (None: data.files must name it)
FILE_ROLES: dict[str, Callable[[DataConfig], tuple[Roles, Roles]]] = {
    "atomic": lambda cfg: ({"inter": f"{cfg.name}.inter"}, {"item": f"{cfg.name}.item", "user": f"{cfg.name}.user"}),
    "ml-1m": lambda cfg: ({"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"}, {}),
    "yelp": lambda cfg: ({"reviews": "yelp_academic_dataset_review.json",
                          "businesses": "yelp_academic_dataset_business.json"},
                         {"users": "yelp_academic_dataset_user.json"}),
    "amazon2018": lambda cfg: ({"reviews": None, "meta": None}, {}),
    "amazon2023": lambda cfg: ({"reviews": None, "meta": None}, {}),
    "steam": lambda cfg: ({"reviews": "australian_user_reviews.json", "games": "steam_games.json"}, {}),
    "table": lambda cfg: ({"interactions": None}, {"items": None, "users": None}),
}

READERS: dict[str, Callable[[DataConfig, Path], RawDataset]] = {
    "ml-100k": read_ml100k,
    "atomic": read_atomic,
    "ml-1m": read_ml1m,
    "yelp": read_yelp,
    "amazon2018": read_amazon2018,
    "amazon2023": read_amazon2023,
    "steam": read_steam,
    "table": read_table,
}


def raw_root(cfg: DataConfig, repo_root: Path) -> Path:
    root = Path(cfg.path)
    return root if root.is_absolute() else repo_root / root


def check_raw_files(cfg: DataConfig, repo_root: Path) -> None:
    """Before any work: every file the format needs is there (ML-100K downloads itself)."""
    if cfg.format in FILE_ROLES:
        locate(cfg, raw_root(cfg, repo_root), *FILE_ROLES[cfg.format](cfg))


def read_raw(cfg: DataConfig, repo_root: Path) -> RawDataset:
    root = raw_root(cfg, repo_root)
    reader = READERS.get(cfg.format)
    if reader is None:
        raise DataError(f"no reader for format '{cfg.format}' yet; available: {', '.join(sorted(READERS))}")
    ds = reader(cfg, root)
    if cfg.max_interactions is not None:
        ds.interactions = ds.interactions.head(cfg.max_interactions)
    return ds

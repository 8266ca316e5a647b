"""Text tables with a header line: RecBole atomic files (tab separated, `name:type` header) and CSV/TSV
(CSV quoting, where a field may hold the separator or a line break), shared by the `atomic` and `table`
readers."""

from __future__ import annotations

import csv
from collections import deque
from pathlib import Path
from typing import Iterator

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.lines import LineReader
from lagcl.data.readers.values import CATEGORIES, BadRecord, any_timestamp, collect, interactions, to_float
from lagcl.errors import DataError


SEPARATORS = (",", ";", "\t", "|")  # what a header line is checked for when its columns are not found


class DelimitedFile:
    """A text table with a header line: its column names and its rows, streamed with line numbers.

    `sep` splits fields (RecBole atomic files: tab, names written `name:type`); `quoted` reads CSV
    quoting, where a field may hold the separator or a line break."""

    def __init__(self, reader: LineReader, sep: str, quoted: bool = False, atomic: bool = False,
                 dataset: str = "<name>"):
        self.reader, path, self.dataset = reader, reader.path, dataset
        self.path, self.sep, self.quoted, self.atomic = path, sep, quoted, atomic
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
        n, hint = len(self.columns), self.separator_hint()
        for lineno, parts in self._lines:
            if len(parts) != n:
                self.reader.bad(lineno, f"expected {n} fields separated by {self.sep!r}, found {len(parts)}"
                                + (f"; {hint}" if hint else ""))
                continue
            yield lineno, parts

    def separator_hint(self) -> str | None:
        """When the header splits into fewer columns on `sep` than on another common separator, the file is most
        likely separated by that one: what to set (None when the header gives no such sign, and for RecBole
        atomic files, whose separator is always a tab)."""
        if self.atomic:
            return None
        line = self.sep.join(self.columns)
        counts = {s: line.count(s) for s in SEPARATORS if s != self.sep}
        best = max(counts, key=counts.get)
        if counts[best] + 1 <= len(self.columns):
            return None
        n = len(self.columns)
        return (f"the file has {n} column{'s' * (n != 1)} when split on {self.sep!r}; if it is separated by {best!r} "
                f"set data.separator={best!r} (in conf/data/{self.dataset}.yaml, or --set data.separator={best!r})")

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
                                + (self.separator_hint() or f"set data.columns.{need} in conf/data/{cfg.name}.yaml"))
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

        return interactions(cfg, self.reader, self.rows(), to_rows)


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


def with_raw_id(df: pl.DataFrame, id_field: str, path: Path, key: str, hint: str | None = None) -> pl.DataFrame:
    if id_field not in df.columns:
        raise DataError(f"{path}: no id column '{id_field}' (columns: {df.columns}); "
                        + (hint or f"set data.columns.{key}"))
    return df.drop("raw_id", strict=False).rename({id_field: "raw_id"})


def with_categories(items: pl.DataFrame, column: str, sep: str) -> pl.DataFrame:
    """`column` (a list, or a string split on `sep`) as the canonical `categories` list[str]."""
    c = pl.col(column)
    if items.schema[column] == pl.String:
        c = c.str.split(sep).list.eval(pl.element().str.strip_chars())
    c = c.cast(CATEGORIES).list.eval(pl.element().filter(pl.element() != "")).fill_null([])
    return items.with_columns(c.alias("_categories")).drop(column).rename({"_categories": "categories"})

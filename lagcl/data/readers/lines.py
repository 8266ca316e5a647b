"""Reading a dataset's text files line by line, and reporting the lines that cannot be read.

A file whose name ends in `.gz` is read through gzip; everything else as plain text, in the format's
published encoding or `data.encoding`. A UTF-8 byte-order mark is dropped by every reader (and means
UTF-8); a line that does not decode is an error naming file:line, the byte offset and data.encoding.

Malformed lines (bad JSON, wrong field count, a rating that is not a number, a missing id, a CSV quote
never closed) and values out of range (an empty id, a rating outside `data.rating_range`, a timestamp
outside 1970-2100) are an error naming file:line, or with `data.strict: false` skipped and counted by
reason with their first three places (`RawDataset.skipped`, the prepare manifest's stats).
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset
from lagcl.errors import DataError


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
            gz = self.path.name.endswith(".gz")
            fh = gzip.open(self.path, "rb") if gz else open(self.path, "rb")
            with fh:
                yield self._decoded(self._until_cut(fh) if gz else fh)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{self.path} is not a complete gzip file ({exc}); download it again, or "
                            "drop the .gz from its name if it is plain text") from None
        except OSError as exc:
            raise DataError(f"cannot read {self.path}: {exc.strerror or exc}; check its permissions") from None

    def _until_cut(self, fh: Iterable[bytes]) -> Iterator[bytes]:
        """A gzip file's lines; where the compressed stream ends early or is corrupt, strict mode raises (the
        caller names the file), lenient mode keeps the lines before the cut and counts the loss."""
        lineno = 0
        try:
            for raw in fh:
                lineno += 1
                yield raw
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            if self.strict:
                raise DataError(f"{self.path} is truncated or corrupt after line {lineno} ({exc}): download it "
                                "again, or set data.strict=false to keep the lines before the cut and count the "
                                "loss") from None
            self.skipped += 1
            self.skips.add("truncated or corrupt gzip (the rest of the file is lost)",
                           f"{self.path.name}:{lineno + 1}")

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

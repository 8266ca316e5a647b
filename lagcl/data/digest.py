"""Content digests of a dataset's raw input files: the raw data's part of the prepare fingerprint.

A scheduled rerun must see new data: the prepare fingerprint holds one digest made of every input file's
SHA-256 (by role), so appending ratings to a raw file recomputes prepare and everything after it, while the
folder the files sit in does not matter (moving it recomputes nothing). Hashing a multi-GB file on every
`lagcl status` would be slow, so a small index `<cache_dir>/raw-digests.json` remembers each file's digest
and row count under its (path, size, mtime, inode): an unchanged file is hashed once.
"""

from __future__ import annotations

import gzip
import zlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lagcl.artifacts import atomic_write_bytes
from lagcl.config import DataConfig

INDEX = "raw-digests.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One raw input file: its role for the reader, where it is, and what is in it."""

    role: str
    path: str
    sha256: str  # "" when the file is not there (the reader will name it)
    size: int
    rows: int  # lines of a text file (decompressed for .gz), rows of a Parquet file

    def as_json(self) -> dict[str, object]:
        return {"file": Path(self.path).name, "sha256": self.sha256, "size": self.size, "rows": self.rows}


def input_paths(cfg: DataConfig, root: Path) -> dict[str, Path]:
    """role -> path of every file the format reads: its default names (ML-100K: the atomic files) with
    `data.files` on top. Optional roles whose file is absent are left out; required ones stay, so a missing
    file shows as missing rather than silently dropping out of the digest."""
    from lagcl.data.readers import FILE_ROLES

    fmt = "atomic" if cfg.format == "ml-100k" else cfg.format
    named = cfg.model_copy(update={"name": "ml-100k"}) if cfg.format == "ml-100k" else cfg
    if fmt not in FILE_ROLES:
        return {}
    required, optional = FILE_ROLES[fmt](named)
    names = {**{r: d for r, d in {**required, **optional}.items() if d is not None}, **cfg.files}
    out = {}
    for role, name in sorted(names.items()):
        p = root / name
        if role in required or role in cfg.files or p.is_file():
            out[role] = p
    return out


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    opener = gzip.open if path.suffix == ".gz" else open
    n, last = 0, b"\n"
    try:
        with opener(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except (gzip.BadGzipFile, EOFError, zlib.error):
        # a truncated or corrupt gzip (its reader says what to do about it): the whole lines before the cut,
        # counted line by line since a failed chunk read returns nothing of what it had decompressed
        n = 0
        with gzip.open(path, "rb") as fh:
            try:
                for _ in fh:
                    n += 1
            except (gzip.BadGzipFile, EOFError, zlib.error):
                pass
        return n
    return n + (last != b"\n")  # a last line without a newline counts too


def _hash(path: Path) -> tuple[str, int]:
    """SHA-256 and row count. Plain text files are read once for both."""
    h = hashlib.sha256()
    if path.suffix in (".parquet", ".gz"):
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest(), count_rows(path)
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return h.hexdigest(), n + (last != b"\n")


class DigestIndex:
    """(path, size, mtime_ns, inode) -> (sha256, rows), kept in `<cache_dir>/raw-digests.json`."""

    def __init__(self, cache_root: Path):
        self.path = Path(cache_root) / INDEX
        self.hashed: list[str] = []  # files hashed by this process (an index miss)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.entries = {}  # a damaged index only costs one re-hash

    def file(self, role: str, path: Path) -> InputFile:
        path = Path(path).resolve()
        if not path.is_file():
            return InputFile(role, str(path), "", 0, 0)
        st = path.stat()
        key = str(path)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        hit = self.entries.get(key)
        if hit is None or any(hit.get(k) != v for k, v in stamp.items()):
            sha, rows = _hash(path)
            self.entries[key] = hit = {**stamp, "sha256": sha, "rows": rows}
            self.hashed.append(key)
        return InputFile(role, key, hit["sha256"], st.st_size, hit["rows"])

    def save(self) -> None:
        if self.hashed:
            atomic_write_bytes(self.path, json.dumps(self.entries, indent=1, sort_keys=True).encode())


def raw_inputs(cfg: DataConfig, root: Path, cache_root: Path) -> dict[str, InputFile]:
    """role -> InputFile for the dataset's raw files under `root` (hashing only files the index has not seen
    at their current size and mtime). ML-100K, which downloads itself, is fetched first: its digest must be
    the one of the files prepare will read."""
    if cfg.format == "ml-100k":
        from lagcl.data.fetch import ensure_ml100k

        ensure_ml100k(root)
    index = DigestIndex(cache_root)
    files = {role: index.file(role, p) for role, p in input_paths(cfg, root).items()}
    index.save()
    return files


def inputs_digest(files: dict[str, InputFile]) -> str:
    """One digest of the contents by role: independent of the folder the files are in."""
    payload = json.dumps({role: f.sha256 for role, f in sorted(files.items())}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

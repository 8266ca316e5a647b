"""The one artifact writer: stage folders keyed by fingerprint, Parquet tables, shards, manifests.

A stage's output lives in `<root>/<dataset>/<stage>/<fingerprint>/`. Tables are written to a temp
name, fsynced and renamed; `manifest.json` is written last the same way, with a SHA-256 of every
file, so a folder without a manifest (or with a file whose checksum no longer matches) is incomplete
and is never read. Long stages append numbered shards as work finishes and list them on restart.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from lagcl.errors import ArtifactError, ContractError, StageLockedError

MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<idx>\d{6})\.parquet$")


def fingerprint(stage: str, config_hash: str, upstream: dict[str, str], code_version: str) -> str:
    """Stage name + its config section hash + upstream fingerprints + stage code version."""
    payload = json.dumps(
        {"stage": stage, "config": config_hash, "upstream": dict(sorted(upstream.items())), "code": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to `.<name>.tmp-<pid>`, fsync, rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write a Polars frame as zstd Parquet, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        df.write_parquet(tmp, compression="zstd")
    except pl.exceptions.ComputeError as exc:
        tmp.unlink(missing_ok=True)
        # Polars reports a full disk as a ComputeError: raise the OSError it wraps (lagcl/errors.py storage_error)
        for code, marker in ((errno.ENOSPC, "os error 28"), (errno.EDQUOT, "os error 122")):
            if marker in str(exc):
                raise OSError(code, os.strerror(code), str(path)) from None
        raise
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(stage_dir: Path, verify: bool = True) -> bool:
    """True when the manifest exists and (with `verify`) every listed file matches its checksum."""
    manifest = read_manifest(stage_dir)
    if manifest is None:
        return False
    if not verify:
        return True
    for name, digest in manifest.get("files", {}).items():
        path = Path(stage_dir) / name
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True


@dataclass
class StageDir:
    """One stage's output folder. Use as a context manager: it holds an exclusive lock while open."""

    path: Path
    stage: str
    fingerprint: str
    config: dict[str, Any] | None = None  # recorded in the manifest: how this folder was made
    writes: tuple[str, ...] = ()  # the tables `finish` requires (the stage's declared outputs)
    _lock_fh: Any = field(default=None, repr=False)
    _started: float = field(default_factory=time.time, repr=False)

    def __enter__(self) -> "StageDir":
        self.path.mkdir(parents=True, exist_ok=True)
        # "a+": opening must not wipe what the current holder wrote into the lock file
        self._lock_fh = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.seek(0)
            holder = self._lock_fh.read().strip()
            self._lock_fh.close()
            self._lock_fh = None
            raise StageLockedError(
                f"stage '{self.stage}' ({self.path}) is being written by another run"
                f"{f' ({holder})' if holder else ''}; wait for it to finish or stop it, then run the same "
                "command again: finished stages are reused and this one resumes where that run left it"
            ) from None
        # who holds the lock, for the message a second writer gets (the lock itself is the flock)
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(f"process {os.getpid()} on {os.uname().nodename}, since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")
        self._lock_fh.flush()
        self._clean_temp_files()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _clean_temp_files(self) -> None:
        for tmp in self.path.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return is_complete(self.path)

    # --- tables ---------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def write_table(self, name: str, df: pl.DataFrame) -> Path:
        path = self.table_path(name)
        write_parquet(df, path)
        return path

    def read_table(self, name: str) -> pl.DataFrame:
        return read_table(self.path, name)

    # --- shards: long stages append results as they arrive ------------------------------------
    def shard_dir(self, name: str) -> Path:
        return self.path / "shards" / name

    def shards(self, name: str) -> list[Path]:
        d = self.shard_dir(name)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))

    def write_shard(self, name: str, df: pl.DataFrame) -> Path:
        """Append the next numbered shard; a crash mid-write leaves only a temp file, removed on reopen."""
        existing = self.shards(name)
        idx = int(_SHARD_RE.match(existing[-1].name)["idx"]) + 1 if existing else 0
        path = self.shard_dir(name) / f"{name}-{idx:06d}.parquet"
        write_parquet(df, path)
        return path

    def read_shards(self, name: str, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
        files = self.shards(name)
        if not files:
            return pl.DataFrame(schema=schema) if schema else pl.DataFrame()
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical")

    # --- binary files (checkpoints) -----------------------------------------------------------
    def file_path(self, name: str) -> Path:
        return self.path / name

    # --- manifest, written last ---------------------------------------------------------------
    def finish(self, meta: dict[str, Any] | None = None, files: list[str] | None = None,
               read: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Checksum the outputs and write the manifest atomically; the stage is complete after this. A table of
        `writes` that is not among the outputs is refused before anything is written (the folder stays
        incomplete). `read`: the upstream tables the stage read, recorded as its lineage."""
        names = files if files is not None else sorted(
            str(p.relative_to(self.path)) for p in self.path.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, ".lock") and not p.name.startswith(".")
        )
        missing = [t for t in self.writes if not _table_parts(dict.fromkeys(names), t)]
        if missing:
            raise ContractError(f"the {self.stage} stage finished without its declared table(s) {missing} "
                                f"(tasks/stages.py writes); outputs: {sorted(names)}")
        rows = {}
        for name in names:
            p = self.path / name
            if p.suffix == ".parquet":
                rows[name] = pl.scan_parquet(p).select(pl.len()).collect().item()
        manifest = {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            # microseconds: "the newest finished folder" (groups.incremental, `lagcl report`) must not be a tie
            # between runs that finish in the same second
            "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "seconds": round(time.time() - self._started, 3),
            "files": {name: sha256_file(self.path / name) for name in names},
            "rows": rows,
            "meta": meta or {},
        }
        if self.config is not None:
            manifest["config"] = self.config
        if read:
            manifest["read"] = read
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        return manifest


class ArtifactStore:
    """`<root>/<dataset>/<stage>/<fingerprint>/` folders."""

    def __init__(self, root: Path | str, dataset: str):
        self.root = Path(root)
        self.dataset = dataset

    def stage_path(self, stage: str, fp: str) -> Path:
        return self.root / self.dataset / stage / fp

    def stage(self, stage: str, fp: str) -> StageDir:
        return StageDir(self.stage_path(stage, fp), stage, fp)

    def is_complete(self, stage: str, fp: str) -> bool:
        return is_complete(self.stage_path(stage, fp))

    def manifest(self, stage: str, fp: str) -> dict[str, Any] | None:
        return read_manifest(self.stage_path(stage, fp))

    def read_table(self, stage: str, fp: str, name: str) -> pl.DataFrame:
        return read_table(self.stage_path(stage, fp), name)

    def iter_stage_dirs(self, stage: str) -> Iterator[Path]:
        d = self.root / self.dataset / stage
        if d.is_dir():
            yield from sorted(p for p in d.iterdir() if p.is_dir())


def _table_parts(files: dict[str, str], name: str) -> list[str]:
    """The manifest entries holding table `name`: its Parquet file, else its shards."""
    rel = f"{name}.parquet"
    return [rel] if rel in files else sorted(f for f in files if f.startswith(f"shards/{name}/")
                                             and _SHARD_RE.match(Path(f).name))


def has_table(stage_dir: Path, name: str) -> bool:
    """True when the stage folder's manifest lists table `name` (as one file or as shards)."""
    return bool(_table_parts((read_manifest(stage_dir) or {}).get("files", {}), name))


def read_table(stage_dir: Path, name: str) -> pl.DataFrame:
    """Read a table of a complete stage, checking its checksum against the manifest. A table written in
    shards (`StageDir.write_shard`) is read as the concatenation of its shards, each checked."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise ArtifactError(f"{stage_dir} has no manifest: the stage did not finish; rerun the pipeline to resume it")
    files = manifest.get("files", {})
    parts = _table_parts(files, name)
    if not parts:
        raise ArtifactError(f"{stage_dir} has no table '{name}'; tables: {sorted(files)}")
    for part in parts:
        path = stage_dir / part
        if not path.is_file() or sha256_file(path) != files[part]:
            raise ArtifactError(f"{path} does not match its manifest checksum (corrupt or edited); delete "
                                f"{stage_dir / MANIFEST} and rerun to recompute the stage")
    return pl.concat([pl.read_parquet(stage_dir / p) for p in parts], how="vertical")

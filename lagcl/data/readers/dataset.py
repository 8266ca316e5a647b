"""The contract between a raw-format reader and `prepare`, and where a reader finds its files.

A reader returns a RawDataset with raw (string) ids; `prepare` signs, filters, splits and maps ids to
contiguous int32. Readers never filter or sign: that keeps every format's behaviour identical.

Files are found by role (`data.files` maps role -> file name; each reader has default names).
Required files are checked before any is read, so a missing file is reported with all the others
and where the dataset is published. An optional file (item or user attributes) is read when it is
there, whether `data.files` names it or not; when it is absent the items or users come from the
interactions alone (ids, no titles or attributes), said in one log line. A file that is there and
empty is an error that says what the file should hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lagcl.config import DataConfig
from lagcl.errors import DataError

log = logging.getLogger("lagcl.data")

INTERACTION_SCHEMA = {"user_raw": pl.String, "item_raw": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}

Roles = dict[str, str | None]  # role -> default file name (None: data.files must name it)


@dataclass
class RawDataset:
    """interactions(user_raw, item_raw, rating, timestamp); users(raw_id, <attrs>);
    items(raw_id, title, categories: list[str], <attrs>)."""

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    skipped_lines: int = 0
    skipped: dict[str, dict] = field(default_factory=dict)  # reason -> {count, first_lines: ["file:line", ...]}
    notes: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_SCHEMA if c not in self.interactions.columns]
        if missing:
            raise DataError(f"reader produced interactions without columns {missing}")
        self.interactions = self.interactions.select(
            [pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()]
        )
        if "raw_id" not in self.users.columns:
            self.users = pl.DataFrame({"raw_id": self.interactions["user_raw"].unique().sort()})
        if "raw_id" not in self.items.columns:
            self.items = pl.DataFrame({"raw_id": self.interactions["item_raw"].unique().sort()})
        # maintain_order: the same row order on every run (same data, same artifacts)
        self.users = self.users.with_columns(pl.col("raw_id").cast(pl.String)).unique(
            "raw_id", keep="first", maintain_order=True)
        self.items = self.items.with_columns(pl.col("raw_id").cast(pl.String)).unique(
            "raw_id", keep="first", maintain_order=True)
        if "title" not in self.items.columns:
            self.items = self.items.with_columns(pl.col("raw_id").alias("title"))
        if "categories" not in self.items.columns:
            self.items = self.items.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("categories"))


# what an own (format: table) file holds, by role: the canonical column keys of `data.columns` it is read by
OWN_FILE_COLUMNS = {"interactions": ("user", "item", "rating", "timestamp"), "items": ("item", "title", "categories"),
                    "users": ("user",)}


def empty_file_message(path: Path, role: str, cfg: DataConfig) -> str:
    """An empty raw file: a published one is re-downloaded; an own file (format: table) is written again with
    what it should hold."""
    if cfg.format != "table":
        where = f" ({cfg.published_at})" if cfg.published_at else ""
        return f"{path} ({role}) is empty; download it again from the dataset's publisher{where}"
    what = {"interactions": "interaction", "items": "item", "users": "user"}.get(role, "record")
    names = [f"{k} '{cfg.columns[k]}'" for k in OWN_FILE_COLUMNS.get(role, ()) if k in cfg.columns]
    cols = f" ({', '.join(names)}: data.columns in conf/data/{cfg.name}.yaml)" if names else ""
    hint = (" (or remove the file, or its data.files entry: the items and users can come from the interactions "
            "alone)") if role in ("items", "users") else ""
    return (f"{path} ({role}) is empty: it is your own file, and it should hold a header line naming its "
            f"columns{cols} and then one {what} per line (.csv/.tsv/.txt), or be a Parquet table with those "
            f"columns{hint}")


def require_files(root: Path, files: dict[str, str], dataset: str, published_at: str,
                  cfg: DataConfig | None = None) -> dict[str, Path]:
    """Resolve role -> path; one error listing every missing file and where the dataset is published."""
    paths = {role: root / name for role, name in files.items()}
    missing = [f"{p} ({role})" for role, p in paths.items() if not p.is_file()]
    if missing:
        where = f" The dataset is published at {published_at}." if published_at else ""
        raise DataError(
            f"dataset '{dataset}' is missing {len(missing)} file(s):\n  " + "\n  ".join(missing)
            + f"\nPut them in {root} (set data.path / data.files in conf/data/{dataset}.yaml to change this).{where}"
        )
    for role, p in paths.items():
        if p.stat().st_size == 0:
            raise DataError(empty_file_message(p, role, cfg) if cfg is not None else
                            f"{p} ({role}) is empty; download it again from the dataset's publisher")
    return paths


def locate(cfg: DataConfig, root: Path, required: dict[str, str | None],
           optional: dict[str, str | None] | None = None, say_absent: bool = True) -> dict[str, Path]:
    """role -> path. Required roles must exist (one error for all); optional roles are read when their
    file is there (named by `data.files` or by the format's default), and an absent one is logged in one
    line (`say_absent`). A file that is there must not be empty. A default of None means the role has no
    standard file name, so `data.files` must give it."""
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
    must = {r: n for r, n in names.items() if r in required}
    paths = require_files(root, must, cfg.name, cfg.published_at, cfg)
    absent = []
    for role in optional:
        p = root / names[role] if role in names else None
        if p is not None and p.is_file():
            if p.stat().st_size == 0 and role in cfg.files:
                raise DataError(empty_file_message(p, role, cfg))
            if p.stat().st_size > 0:  # an empty default-named file is a placeholder, as if absent
                paths[role] = p
                continue
        if p is not None:
            absent.append((role, p))
    if absent and say_absent:
        plural = {"item": "items", "user": "users"}
        log.info("%s: %s not there: the %s come from the interactions alone (named by their ids; no categories or "
                 "attributes in their profiles)", cfg.name,
                 " and ".join(f"the {role} file {p}" for role, p in absent) + (" is" if len(absent) == 1 else " are"),
                 " and ".join(plural.get(role, role) for role, _ in absent))
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


def raw_root(cfg: DataConfig, repo_root: Path) -> Path:
    root = Path(cfg.path)
    return root if root.is_absolute() else repo_root / root

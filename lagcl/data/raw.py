"""The contract between a raw-format reader and `prepare`.

A reader returns a RawDataset with raw (string) ids; `prepare` signs, filters, splits and maps ids to
contiguous int32. Readers never filter or sign: that keeps every format's behaviour identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lagcl.errors import DataError

INTERACTION_SCHEMA = {"user_raw": pl.String, "item_raw": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}


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


def require_files(root: Path, files: dict[str, str], dataset: str, published_at: str) -> dict[str, Path]:
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
            raise DataError(f"{p} ({role}) is empty; download it again from the dataset's publisher")
    return paths

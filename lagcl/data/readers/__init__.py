"""Raw-format readers: each turns a dataset's published files into a RawDataset, one module per format.

`READERS[format]` is `(cfg, root) -> RawDataset`; `read_raw` picks the reader of `data.format`.
Conventions shared by every reader, and where they live:

- Files are found by role, required ones checked before any is read (`dataset.locate`).
- Text is decoded line by line: gzip by the `.gz` suffix, the format's published encoding or
  `data.encoding`, a UTF-8 byte-order mark dropped; malformed lines are an error naming file:line, or
  with `data.strict: false` skipped and counted by reason (`lines`).
- Values are checked (non-empty ids, ratings in `data.rating_range`, timestamps 1970-2100) and
  streamed into column chunks; ids are kept exactly as published (`values`).
- Header tables, RecBole atomic and CSV/TSV, share one parser (`delimited`).
- Record-per-line formats (Yelp, Amazon, Steam: one JSON or Python-literal record a line) read their
  files by role through one `values.RecordFiles`; every interactions file goes through `values.interactions`.

The formats: `atomic` (RecBole atomic files, and ML-100K in that format), `movielens` (ML-1M),
`yelp`, `amazon` (2018 and 2023 releases), `steam`, `table` (your own CSV/TSV/Parquet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lagcl.config import DataConfig
from lagcl.data.readers import amazon, atomic, movielens, steam, table, yelp
from lagcl.data.readers.dataset import RawDataset, Roles, locate, raw_root
from lagcl.errors import DataError

__all__ = ["FILE_ROLES", "READERS", "RawDataset", "check_raw_files", "raw_root", "read_raw"]

# format -> (required roles, optional roles), each role -> default file name (None: data.files must name it)
FILE_ROLES: dict[str, Callable[[DataConfig], tuple[Roles, Roles]]] = {
    "atomic": atomic.file_roles,
    "ml-1m": movielens.file_roles,
    "yelp": yelp.file_roles,
    "amazon2018": amazon.file_roles,
    "amazon2023": amazon.file_roles,
    "steam": steam.file_roles,
    "table": table.file_roles,
}

READERS: dict[str, Callable[[DataConfig, Path], RawDataset]] = {
    "ml-100k": atomic.read_ml100k,
    "atomic": atomic.read_atomic,
    "ml-1m": movielens.read_ml1m,
    "yelp": yelp.read_yelp,
    "amazon2018": amazon.read_amazon2018,
    "amazon2023": amazon.read_amazon2023,
    "steam": steam.read_steam,
    "table": table.read_table,
}


def check_raw_files(cfg: DataConfig, repo_root: Path) -> None:
    """Before any work: every file the format needs is there (ML-100K downloads itself)."""
    if cfg.format in FILE_ROLES:
        locate(cfg, raw_root(cfg, repo_root), *FILE_ROLES[cfg.format](cfg), say_absent=False)


def read_raw(cfg: DataConfig, repo_root: Path) -> RawDataset:
    root = raw_root(cfg, repo_root)
    reader = READERS.get(cfg.format)
    if reader is None:
        raise DataError(f"no reader for format '{cfg.format}' yet; available: {', '.join(sorted(READERS))}")
    ds = reader(cfg, root)
    if cfg.max_interactions is not None:
        ds.interactions = ds.interactions.head(cfg.max_interactions)
    return ds

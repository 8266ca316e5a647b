"""RecBole atomic files (`<name>.inter`, optional `<name>.item` and `<name>.user`), and ML-100K as the
recbole==1.2.1 wheel ships it in that format.

Tab separated, UTF-8, with a header line whose fields are written `name:type` (RecBole's `token`,
`float`, `token_seq`: space-separated lists). `data.columns` maps the canonical names to the files'
field names.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles, column_names, locate
from lagcl.data.readers.delimited import DelimitedFile, with_categories, with_raw_id
from lagcl.data.readers.lines import Files


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


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return {"inter": f"{cfg.name}.inter"}, {"item": f"{cfg.name}.item", "user": f"{cfg.name}.user"}


def _pick(wanted: str, fields: list[str]) -> str | None:
    return next((f for f in wanted.split("|") if f in fields), None)


def read_atomic(cfg: DataConfig, root: Path) -> RawDataset:
    """RecBole atomic files: `<name>.inter` (+ optional `<name>.item`, `<name>.user`).

    `data.columns` maps canonical names (user, item, rating, timestamp, title, categories) to the
    files' field names; without a rating field the dataset must be `all_positive` (rating 1.0).
    """
    paths = locate(cfg, root, *file_roles(cfg))
    col = column_names(cfg, ATOMIC_COLUMNS)
    files = Files(cfg)
    table = DelimitedFile(files(paths["inter"]), "\t", atomic=True)
    inter = table.interactions(cfg, col)

    items = pl.DataFrame()
    if "item" in paths:
        table = DelimitedFile(files(paths["item"]), "\t", atomic=True)
        items = with_raw_id(table.frame(), col["items_id"] or col["item"], paths["item"], "items_id")
        title = _pick(col["title"], items.columns)
        if title and title != "title":
            items = items.drop("title", strict=False).rename({title: "title"})
        cats = _pick(col["categories"], items.columns)
        if cats:
            items = with_categories(items, cats, col["categories_sep"])
    users = pl.DataFrame()
    if "user" in paths:
        table = DelimitedFile(files(paths["user"]), "\t", atomic=True)
        users = with_raw_id(table.frame(), col["users_id"] or col["user"], paths["user"], "users_id")
    return files.dataset(inter, users, items)


def read_ml100k(cfg: DataConfig, root: Path) -> RawDataset:
    """ML-100K as shipped in the recbole==1.2.1 wheel (fetched into cache/raw by lagcl.data.fetch)."""
    from lagcl.data.fetch import ensure_ml100k

    ensure_ml100k(root)
    ds = read_atomic(cfg.model_copy(update={"name": "ml-100k"}), root)
    if "release_year" in ds.items.columns:
        ds.items = ds.items.rename({"release_year": "year"})
    return ds


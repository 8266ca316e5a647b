"""MovieLens 1M (GroupLens): `ratings.dat`, `users.dat`, `movies.dat`, `::` separated, latin-1.

As the dataset's README defines them: ratings.dat is UserID::MovieID::Rating::Timestamp (ratings 1-5,
unix seconds); users.dat is UserID::Gender::Age::Occupation::Zip-code (occupation a code 0-20);
movies.dat is MovieID::Title::Genres (titles 'Name (Year)', genres `|` separated).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from lagcl.config import DataConfig
from lagcl.data.readers.dataset import RawDataset, Roles, locate, no_columns
from lagcl.data.readers.lines import Files
from lagcl.data.readers.values import (CATEGORIES, BadRecord, collect, interactions, split_list, to_float,
                                       to_int)

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # the codes 0-20 of the dataset's README, so profiles read words rather than numbers
TITLE_YEAR = re.compile(r"^(.*\S)\s*\((\d{4})\)\s*$")


def file_roles(cfg: DataConfig) -> tuple[Roles, Roles]:
    return {"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"}, {}


def read_ml1m(cfg: DataConfig, root: Path) -> RawDataset:
    """MovieLens 1M: `::` separated, latin-1. Titles 'Name (Year)' become title + year."""
    no_columns(cfg)
    paths = locate(cfg, root, *file_roles(cfg))
    files = Files(cfg, encoding="latin-1")

    reader = files(paths["ratings"])
    inter = interactions(cfg, reader, reader.rows("::", 4), lambda p: [
        (ml1m_id(p[0], "UserID"), ml1m_id(p[1], "MovieID"), to_float(p[2], "rating"), to_int(p[3], "timestamp"))])

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


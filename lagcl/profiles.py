"""User and item profiles (eq. 1): P_u = LLM(S_u, Q_u), P_v = LLM(S_v, Q_v).

`profile_requests` builds the query inputs Q_u / Q_v from the canonical tables, using TRAINING
interactions only (valid/test ratings in a profile would leak the evaluation targets into every
later stage). `run_profiles` sends them through an engine in shards, writing each shard as its
answers arrive, so a rerun skips every id already answered.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import polars as pl

from lagcl.artifacts import StageDir
from lagcl.semantic.base import (DISLIKED_GENRES, GENRES, LIKED_GENRES, RATING_COUNTS, Kind, Profile, ProfileRequest,
                                 SemanticEngine)

log = logging.getLogger("lagcl.profiles")

SHARD = "profiles"
# facts: Profile.facts as JSON (null where the engine composed none: an LLM's profile)
SHARD_SCHEMA = {"kind": pl.String, "id": pl.Int32, "summarization": pl.String, "reasoning": pl.String,
                "facts": pl.String}
# user columns that are identifiers, not traits (a zip code says nothing a model can use)
_NOT_TRAITS = {"user", "raw_id", "zip_code"}
TOP_GENRES = 4


def item_label(title: str | None, year: str | None) -> str:
    title = (title or "").strip()
    return f"{title} ({year})" if year and str(year).strip() and f"({year})" not in title else title


def _top_genres(genre_lists: Sequence[Sequence[str]], k: int = TOP_GENRES) -> str:
    counts = Counter(g for gs in genre_lists for g in (gs or ()))
    return ", ".join(g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def raw_labels(table: pl.DataFrame, kind: str) -> dict[int, str]:
    """Internal id -> the dataset's own id (prepare's `users`/`items` tables), what LLM prompts name a user or
    an item by: unlike internal ids, raw ids do not move when new data arrives (lagcl.semantic.base)."""
    if "raw_id" not in table.columns:
        return {}
    return {i: str(r) for i, r in table.select(kind, pl.col("raw_id").cast(pl.String)).iter_rows() if r is not None}


# counts shown by `coarse`: the nearest on a 1-2-3-5 grid in log space, so a handful of new ratings seldom moves
# an item to another value
_COUNT_GRID = sorted({g * 10 ** k for g in (1, 2, 3, 5) for k in range(9)})
_SHARE_WORDS = ((0.8, "mostly positive"), (0.6, "more positive than negative"), (0.4, "mixed"),
                (0.2, "more negative than positive"), (0.0, "mostly negative"))


def rating_counts(n: int, positive: int, coarse: bool = False) -> str:
    """An item's training ratings as its profile request states them (profiles.item_rating_counts)."""
    if not n:
        return "none in training"
    if not coarse:
        return f"{n} in training, {positive / n:.0%} positive"
    about = min(_COUNT_GRID, key=lambda g: abs(math.log(g) - math.log(n)))
    share = next(word for floor, word in _SHARE_WORDS if positive / n >= floor)
    return f"about {about} in training, {share}"


def profile_requests(interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame,
                     history: int = 30, item_rating_counts: str = "exact") -> list[ProfileRequest]:
    """Q_u for every user (traits, liked/disliked titles newest first, genre counts) and Q_v for every
    item (title, year, genres, and its training ratings as `item_rating_counts` says: rating_counts); users
    first, then items, each by id."""
    has_cats = "categories" in items.columns
    has_year = "year" in items.columns
    meta = items.select(
        "item", pl.col("title").fill_null(""),
        (pl.col("categories") if has_cats else pl.lit([], dtype=pl.List(pl.String))).alias("categories"),
        (pl.col("year").cast(pl.String) if has_year else pl.lit(None, dtype=pl.String)).alias("year"),
    )
    label = {r["item"]: item_label(r["title"], r["year"]) for r in meta.iter_rows(named=True)}
    cats = {r["item"]: list(r["categories"] or []) for r in meta.iter_rows(named=True)}
    train = interactions.filter(pl.col("split") == "train").sort(["user", "timestamp", "item"], descending=[False, True, False])
    hist: dict[int, dict[int, list[int]]] = {}
    for u, sign, its in train.group_by(["user", "sign"], maintain_order=True).agg("item").iter_rows():
        hist.setdefault(u, {})[sign] = its

    out: list[ProfileRequest] = []
    traits = [c for c in users.columns if c not in _NOT_TRAITS]
    user_raw = raw_labels(users, "user")
    for row in users.sort("user").iter_rows(named=True):
        u = row["user"]
        liked = hist.get(u, {}).get(1, [])
        disliked = hist.get(u, {}).get(-1, [])
        attrs = {c: str(row[c]) for c in traits if row[c] is not None and str(row[c]).strip()}
        if liked:
            attrs[LIKED_GENRES] = _top_genres([cats.get(i, []) for i in liked])
        if disliked:
            attrs[DISLIKED_GENRES] = _top_genres([cats.get(i, []) for i in disliked])
        out.append(ProfileRequest("user", u, attributes={k: v for k, v in attrs.items() if v},
                                  liked=tuple(label[i] for i in liked[:history]),
                                  disliked=tuple(label[i] for i in disliked[:history]), label=user_raw.get(u, "")))

    counts = train.group_by("item").agg(pl.len().alias("n"), (pl.col("sign") == 1).sum().alias("pos"))
    stats = {i: (n, p) for i, n, p in counts.iter_rows()}
    item_raw = raw_labels(items, "item")
    for r in meta.sort("item").iter_rows(named=True):
        attrs = {}
        if r["year"]:
            attrs["year"] = str(r["year"])
        if r["categories"]:
            attrs[GENRES] = ", ".join(r["categories"])
        if item_rating_counts != "off":
            attrs[RATING_COUNTS] = rating_counts(*stats.get(r["item"], (0, 0)), coarse=item_rating_counts == "coarse")
        out.append(ProfileRequest("item", r["item"], title=r["title"], attributes=attrs,
                                  label=item_raw.get(r["item"], "")))
    return out


@dataclass
class ProfileRun:
    requested: int
    answered: int  # in this run
    skipped: int  # answered by an earlier run
    failed: int  # ids still without a usable profile


def validate_profiles(batch: Sequence[ProfileRequest], reply: Sequence[Profile]) -> tuple[list[Profile], list[str]]:
    """Keep profiles for requested ids only, each once, with non-empty text; the rest are problems."""
    wanted = {(r.kind, r.id) for r in batch}
    seen: set[tuple[str, int]] = set()
    good, problems = [], []
    for p in reply:
        key = (p.kind, p.id)
        if key not in wanted:
            problems.append(f"unknown {p.kind} {p.id}")
        elif key in seen:
            problems.append(f"duplicate {p.kind} {p.id}")
        elif not (p.summarization or "").strip():
            problems.append(f"empty summarization for {p.kind} {p.id}")
        else:
            seen.add(key)
            good.append(p)
    problems += [f"missing {k} {i}" for k, i in sorted(wanted - seen)]
    return good, problems


def run_profiles(engine: SemanticEngine, requests: Sequence[ProfileRequest], sd: StageDir, shard_size: int,
                 on_shard: Callable[[int, int], None] | None = None) -> ProfileRun:
    """Profile every request not yet in a shard; one shard per `shard_size` requests, written on arrival.

    `on_shard(done, total)` is called after each shard (progress reporting)."""
    done = {(k, i) for k, i in sd.read_shards(SHARD, SHARD_SCHEMA).select("kind", "id").iter_rows()}
    todo = [r for r in requests if (r.kind, r.id) not in done]
    answered = failed = 0
    for start in range(0, len(todo), shard_size):
        batch = todo[start:start + shard_size]
        good, problems = validate_profiles(batch, engine.profile(batch))
        if problems:
            failed += len(batch) - len(good)
            log.warning("profiles: %d problem(s) in a reply to %d requests, %d without a usable profile "
                        "(e.g. %s); a rerun asks for those again", len(problems), len(batch),
                        len(batch) - len(good), problems[0])
        if good:
            sd.write_shard(SHARD, pl.DataFrame(
                {"kind": [p.kind for p in good], "id": [p.id for p in good],
                 "summarization": [p.summarization for p in good], "reasoning": [p.reasoning for p in good],
                 "facts": [None if p.facts is None else json.dumps(p.facts, sort_keys=True) for p in good]},
                schema=SHARD_SCHEMA))
        answered += len(good)
        if on_shard:
            on_shard(len(done) + answered, len(requests))
    return ProfileRun(len(requests), answered, len(requests) - len(todo), failed)


def profile_tables(sd: StageDir, engine: SemanticEngine) -> tuple[pl.DataFrame, pl.DataFrame]:
    """user_profiles / item_profiles (id, summarization, reasoning, facts, engine, model, approximate) from the
    shards."""
    df = sd.read_shards(SHARD, SHARD_SCHEMA).unique(["kind", "id"], keep="first", maintain_order=True)
    label = [pl.lit(engine.name).alias("engine"), pl.lit(engine.model).alias("model"),
             pl.lit(bool(engine.approximate)).alias("approximate")]
    out = []
    for kind in ("user", "item"):
        out.append(df.filter(pl.col("kind") == kind).sort("id")
                   .select(pl.col("id").cast(pl.Int32).alias(kind), "summarization", "reasoning", "facts", *label))
    return out[0], out[1]


def read_profiles(table: pl.DataFrame, kind: Kind, labels: Mapping[int, str] | None = None) -> list[Profile]:
    """The profiles of a user_profiles / item_profiles table, with their facts (None where the table has none),
    labelled with `labels` (the dataset's own ids) where given."""
    facts = table["facts"].to_list() if "facts" in table.columns else [None] * table.height
    return [Profile(kind, i, s, r, label=(labels or {}).get(i, ""), facts=None if f is None else json.loads(f))
            for (i, s, r), f in zip(table.select(kind, "summarization", "reasoning").iter_rows(), facts)]

"""Semantic groups made elsewhere (`groups.source: files`): the collections G^user and G^item of eq. 6 read from
files instead of asked of this run's engine (README "Bring your own LLM outputs"; docs/design.md 14).

Two formats, both keyed by the dataset's own ids (the `raw_id` of prepare's `users` / `items` tables):

- text (any name not ending in `.json`): one `entity_id,group_id` line per entity, the group an integer; blank
  lines are skipped;
- JSON (`.json`): a list of groups, each an object with `members` (a list of id strings, integers accepted) and
  optionally `group_id`, `group_name`, `key_characteristics` (a list of strings or one string), `reasoning` and
  `original_groups` (the eq. 5 partition groups that eq. 6 merged into this one; only counted here).

Faults, in three classes: `unknown` (an id that is not one of the dataset's users/items after prepare, or, with
the id map, not in the other dataset's item file), `duplicate` (an id placed a second time, in the same group or
another: the first place counts) and `malformed` (a line without exactly two fields, a group that is not an
integer, an empty id, a JSON group that is not an object or has no `members` list, a member that is neither a
string nor an integer). Strict (`groups.lenient: false`) any fault is one DataError naming file:line (JSON: the
group's index and the member's), the count per class and what to do; lenient, they are counted and skipped. A
file that cannot be read as a whole (not UTF-8, not JSON, not a list) is an error either way.

Groups are numbered 0.. in the order of each group's smallest member (internal id), as eq. 6's merge numbers
them; a group left without members is dropped. An entity no file line names gets no group, as an entity outside
the groups stage's tables always has (lagcl/chain/levels.py `node_groups` gives each such node a group of its own).

The id map (`groups.id_map: title_year`) reads item files keyed by another dataset that holds the same items
under other ids (MovieLens versions): each of its ids is matched to this dataset's item with the same normalised
title (`normal_title`) and year. A key two items share on either side is ambiguous and matches nothing; items
without a match get no group. The match rate is reported.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lagcl.errors import DataError
from lagcl.groups import MEMBERS_SCHEMA, SIMILARITY_SCHEMA, KindGroups, group_stats

FAULTS = ("unknown", "duplicate", "malformed")
SHOWN = 5  # faults quoted in an error or the manifest, per class
PARTITIONS_COLUMNS = {"kind": pl.String, "partition_group": pl.Int32, "batch": pl.Int32, "local_group": pl.Int32,
                      "name": pl.String, "characteristics": pl.String, "size": pl.UInt32, "singleton": pl.Boolean,
                      "group": pl.Int32}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_ARTICLES = r"(?:the|a|an|la|le|les|l'|il|el|los|las|das|der|die)"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Entry:
    """One member as a file gives it."""

    where: str  # "file:line" or "file: group i, member j"
    raw: str  # the id as written
    group: int  # index into ReadFile.labels


@dataclass
class ReadFile:
    """A group file parsed, before its ids are checked against the dataset."""

    path: Path
    sha256: str
    format: str  # "text" or "json"
    entries: list[Entry] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)  # per file group: (name, characteristics)
    original_groups: int = 0
    faults: list[tuple[str, str, str]] = field(default_factory=list)  # (class, where, what)


def parse_group_file(path: Path) -> ReadFile:
    """Read either format into entries; malformed lines and groups become faults, an unreadable file an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"group file {path} does not exist: set groups.user_file / groups.item_file to an existing "
                        "file (relative to the repository root) or groups.source=engine")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name}: not UTF-8 text (byte {exc.start}); convert it (iconv -t UTF-8)") from None
    out = ReadFile(path, hashlib.sha256(data).hexdigest(), "json" if path.suffix.lower() == ".json" else "text")
    (_parse_json if out.format == "json" else _parse_text)(out, text)
    return out


def _parse_text(out: ReadFile, text: str) -> None:
    groups: dict[int, int] = {}  # group id as written -> index into labels
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{out.path.name}:{n}"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            out.faults.append(("malformed", where, f"{len(fields)} comma-separated field(s), expected "
                                                   f"entity_id,group_id: {line.strip()[:60]!r}"))
            continue
        raw, g = fields
        if not raw:
            out.faults.append(("malformed", where, "empty id"))
            continue
        try:
            gid = int(g)
        except ValueError:
            out.faults.append(("malformed", where, f"group {g!r} is not an integer"))
            continue
        if gid not in groups:
            groups[gid] = len(out.labels)
            out.labels.append((str(gid), ""))
        out.entries.append(Entry(where, raw, groups[gid]))


def _parse_json(out: ReadFile, text: str) -> None:
    name = out.path.name
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); a .json group file "
                        "is a list of groups, each with a `members` list; other names are read as "
                        "`entity_id,group_id` text lines") from None
    if not isinstance(doc, list):
        raise DataError(f"{name}: the JSON is a {type(doc).__name__}, expected a list of groups, each with a "
                        "`members` list of ids")
    for i, g in enumerate(doc):
        where = f"{name}: group {i}"
        if not isinstance(g, dict) or not isinstance(g.get("members"), list):
            what = "not an object" if not isinstance(g, dict) else (
                "no `members` list" if "members" not in g else f"`members` is a {type(g['members']).__name__}")
            out.faults.append(("malformed", where, what))
            continue
        label = str(g.get("group_name") or g.get("group_id") or f"group {i}")
        where = f"{name}: group {i} ({label[:40]})"
        chars = g.get("key_characteristics")
        chars = "; ".join(map(str, chars)) if isinstance(chars, list) else str(chars or "")
        index = len(out.labels)
        out.labels.append((label, chars))
        if isinstance(g.get("original_groups"), list):
            out.original_groups += len(g["original_groups"])
        for j, m in enumerate(g["members"]):
            if isinstance(m, bool) or not isinstance(m, (str, int)) or not str(m).strip():
                out.faults.append(("malformed", f"{where}, member {j}", f"{m!r} is not an id string"))
                continue
            out.entries.append(Entry(f"{where}, member {j}", str(m).strip(), index))


# --- the id map between datasets that share items under other ids -------------------------------------------
def normal_title(title: str) -> str:
    """A title as the id map compares it: accents, parenthesised alternate titles, a leading or trailing article
    ("The X" / "X, The"), punctuation and whitespace removed, lower case."""
    t = unicodedata.normalize("NFKD", title)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower().replace("&", " and ")
    t = re.sub(r"\([^)]*\)", " ", t).strip()
    t = re.sub(rf",\s*{_ARTICLES}\s*$", "", t)
    t = re.sub(rf"^{_ARTICLES}\s+", "", t)
    return re.sub(r"[\W_]+", "", t)


def title_key(title: str | None, year) -> tuple[str, int] | None:
    """(normal title, year); the year from `year` where given, else from a trailing "(YYYY)" of the title."""
    if not title:
        return None
    m = _TITLE_YEAR.match(title.strip())
    if m:
        title, found = m.group(1), int(m.group(2))
        year = year if year not in (None, "") else found
    try:
        year = int(str(year).strip()[:4]) if year not in (None, "") else None
    except ValueError:
        year = None
    name = normal_title(title)
    return (name, year) if name and year is not None else None


def read_other_items(path: Path) -> dict[str, str]:
    """The other dataset's item file: id -> title with year. ML-1M `movies.dat` (`id::Title (Year)::Genres`) or
    ML-100K `u.item` (`id|Title (Year)|date|...`), both latin-1 as GroupLens ships them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"groups.id_map_items {path} does not exist: give the item file (ML-1M movies.dat or "
                        "ML-100K u.item) of the dataset whose ids groups.item_file uses")
    out = {}
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        sep = "::" if "::" in line else "|" if "|" in line else None
        parts = line.split(sep) if sep else []
        if len(parts) < 2 or not parts[0].strip():
            raise DataError(f"{path.name}:{n}: not an ML-1M movies.dat (`id::Title (Year)::Genres`) or ML-100K "
                            f"u.item (`id|Title (Year)|...`) line: {line[:60]!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


@dataclass
class TitleYearMap:
    """Other dataset's item id -> this dataset's raw item id, by (normal title, year)."""

    to_ours: dict[str, str]
    other_ids: set[str]  # every id of the other file (an id outside it is unknown)
    stats: dict


def title_year_map(other_items: Path, items: pl.DataFrame) -> TitleYearMap:
    """Match the other file's items to `items` (prepare's table: raw_id, title and, where the reader has one,
    year) by title key; a key held by two items on one side matches nothing (counted as ambiguous)."""
    other = read_other_items(other_items)
    year = items["year"].cast(pl.String).to_list() if "year" in items.columns else [None] * items.height

    def index(pairs) -> tuple[dict, int]:
        by: dict[tuple, list[str]] = {}
        for rid, title, y in pairs:
            key = title_key(title, y)
            if key is not None:
                by.setdefault(key, []).append(rid)
        return {k: v[0] for k, v in by.items() if len(v) == 1}, sum(len(v) for v in by.values() if len(v) > 1)

    ours, ours_ambiguous = index(zip(items["raw_id"].cast(pl.String).to_list(), items["title"].to_list(), year))
    theirs, theirs_ambiguous = index((rid, t, None) for rid, t in other.items())
    to_ours = {rid: ours[k] for k, rid in theirs.items() if k in ours}
    stats = {"method": "title_year", "file": Path(other_items).name, "other_items": len(other),
             "items": items.height, "matched": len(to_ours),
             "match_rate_of_items": round(len(to_ours) / items.height, 4) if items.height else 0.0,
             "ambiguous_other": theirs_ambiguous, "ambiguous_ours": ours_ambiguous}
    return TitleYearMap(to_ours, set(other), stats)


# --- from entries to the groups stage's tables --------------------------------------------------------------
def fault_summary(faults: list[tuple[str, str, str]]) -> dict[str, dict]:
    return {c: {"count": sum(f[0] == c for f in faults),
                "first": [f"{w}: {what}" for k, w, what in faults if k == c][:SHOWN]} for c in FAULTS}


def import_groups(path: Path, kind: str, table: pl.DataFrame, lenient: bool,
                  id_map: TitleYearMap | None = None) -> KindGroups:
    """One kind's groups from a file, as `lagcl.groups.build_groups` returns them: the assignment (<kind>,
    group), one partition row per file group (the file's groups are taken as eq. 6's collections: nothing is
    merged), no similarity rows and no group_members rows (an incremental engine run never builds on imported
    groups). `table`: prepare's users or items table (internal id, raw_id)."""
    read = parse_group_file(path)
    faults = list(read.faults)
    known = dict(zip(table["raw_id"].cast(pl.String).to_list(), table[kind].to_list()))
    first_place: dict[int, str] = {}
    members: dict[int, list[int]] = {}
    unmatched = 0
    for e in read.entries:
        raw = e.raw
        if id_map is not None:
            if raw not in id_map.other_ids:
                faults.append(("unknown", e.where, f"{kind} id {raw!r} is not in {id_map.stats['file']} "
                                                    "(groups.id_map_items)"))
                continue
            if raw not in id_map.to_ours:
                unmatched += 1  # another dataset's item this one does not hold: no fault, no group
                continue
            raw = id_map.to_ours[raw]
        if raw not in known:
            faults.append(("unknown", e.where, f"{kind} id {raw!r} is not one of the dataset's {len(known):,} "
                                                f"{kind}s (after prepare's filters)"))
            continue
        i = known[raw]
        if i in first_place:
            faults.append(("duplicate", e.where, f"{kind} {e.raw!r} was already placed at {first_place[i]}"))
            continue
        first_place[i] = e.where
        members.setdefault(e.group, []).append(i)
    summary = fault_summary(faults)
    if faults and not lenient:
        counts = ", ".join(f"{s['count']} {c}" for c, s in summary.items() if s["count"])
        shown = "; ".join(f"{w}: {what}" for _, w, what in faults[:SHOWN])
        raise DataError(f"{read.path.name} ({kind} groups): {counts} fault(s): {shown}"
                        f"{' ...' if len(faults) > SHOWN else ''}. Fix the file, or set groups.lenient=true to "
                        "skip such entries (counted in the groups manifest)")
    if not members:
        raise DataError(f"{read.path.name}: no {kind} of the dataset got a group ({len(read.entries)} entries read"
                        f"{f', {unmatched} without a title + year match' if id_map else ''}); check that the file "
                        f"is keyed by this dataset's {kind} ids" + (" or set groups.id_map" if kind == "item" else ""))
    order = sorted(members, key=lambda g: min(members[g]))
    final = {g: n for n, g in enumerate(order)}
    assignment = pl.DataFrame({kind: [m for g in order for m in members[g]],
                               "group": [final[g] for g in order for _ in members[g]]},
                              schema={kind: pl.Int32, "group": pl.Int32}).sort(kind)
    partitions = pl.DataFrame({
        "kind": [kind] * len(order), "partition_group": [final[g] for g in order], "batch": [0] * len(order),
        "local_group": [g for g in order], "name": [read.labels[g][0] for g in order],
        "characteristics": [read.labels[g][1] for g in order], "size": [len(members[g]) for g in order],
        "singleton": [False] * len(order), "group": [final[g] for g in order]}, schema=PARTITIONS_COLUMNS)
    similarity = pl.DataFrame(schema={**SIMILARITY_SCHEMA, "merged": pl.Boolean})
    stats = {**group_stats(assignment), "source": "files", "file": read.path.name, "sha256": read.sha256,
             "format": read.format, "entries": len(read.entries),
             "grouped": assignment.height, "of": len(known),
             "grouped_share": round(assignment.height / len(known), 4) if known else 0.0,
             "file_groups": len(read.labels), "original_groups": read.original_groups,
             "faults": summary, "lenient": lenient,
             "mapping": {**id_map.stats, "entries_unmatched": unmatched,
                         "match_rate_of_entries": round(1 - unmatched / max(1, len(read.entries)), 4)}
             if id_map is not None else None,
             # what an engine run reports, so readers of either source find the same keys
             "partition_groups": len(order), "merged_pairs": 0, "rated_pairs": 0, "candidate_pairs": 0,
             "singleton_ids": 0, "similarity_failed": 0, "profiles_kept": 0, "profiles_partitioned": 0,
             "similarity_reused": 0}
    return KindGroups(assignment, partitions, similarity, pl.DataFrame(schema=MEMBERS_SCHEMA), stats)

"""LLM-guided semantic grouping of users and items (eq. 5-6; docs/design.md 8).

- eq. 5, G_i = LLM(P_{U_i}, S_group): the profiles of one kind are shuffled (seeded) and cut into
  batches of `batch_size`; each batch is one partition request. Every id ends in exactly one group:
  unknown ids in a reply are dropped, an id placed twice keeps its first group, ids left out are
  asked again once in a request of their own, and whatever is still left becomes a singleton group
  (counted, never guessed).
- eq. 6, sim(G_a, G_b) = LLM(G_a, G_b, S_sim): asking for every pair is quadratic in the number of
  groups, so only candidate pairs are rated: for each group, its `candidate_pairs_k` nearest groups
  by cosine of profile-embedding centroids (cost grows with groups * k).
- pairs rated above `tau_sim` are merged transitively (union-find) into the collections G^user and
  G^item; final group ids are contiguous, numbered in order of each group's smallest member id.

Partitions and ratings are written to shards as they arrive, so a rerun sends only what is missing.

Incremental (`groups.incremental`, given a previous result of the same engine and settings): members whose
profile digest (`profile_digest`, keyed by the id the prompt shows, which does not move with new data) is
unchanged keep their previous partition group, name and characteristics; only new or changed profiles are
partitioned (eq. 5), in batches among themselves ordered by shown id; a candidate pair of two kept groups keeps
its previous rating, every pair involving a new group is rated; merging is as in a full run. A kept group is the
previous one less its changed or gone members: eq. 6 reads its name and characteristics, which are the same, and
its size, which may be smaller; counting that as a change would re-rate almost every pair (a group of 20 keeps all
its members with probability 0.85^20 = 4% when 15% of the profiles changed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import polars as pl

from lagcl.artifacts import StageDir
from lagcl.semantic.base import Group, Kind, Profile, SemanticEngine, shown_id
from lagcl.semantic.replies import check_members

log = logging.getLogger("lagcl.groups")

PARTITIONS = "partitions"
SIMILARITY = "similarity"
PARTITIONS_SCHEMA = {"kind": pl.String, "batch": pl.Int32, "local_group": pl.Int32, "name": pl.String,
                     "characteristics": pl.String, "member": pl.Int32, "singleton": pl.Boolean}
SIMILARITY_SCHEMA = {"kind": pl.String, "group_a": pl.Int32, "group_b": pl.Int32, "similarity": pl.Float64}
# the group_members table: each member's partition group and what an incremental rerun compares it by
MEMBERS_SCHEMA = {"kind": pl.String, "member": pl.Int32, "shown": pl.String, "digest": pl.String,
                  "partition_group": pl.Int32}
SIM_SHARD_PAIRS = 256  # pairs per similarity shard (one engine call)


def batches(ids: Sequence, batch_size: int, seed: int) -> list[list]:
    """Seeded shuffle, then consecutive batches: a batch mixes ids from the whole range. `ids` are internal ids
    or any sortable keys (an incremental run batches by the shown ids, which do not move with new data)."""
    keys = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(keys))
    return [sorted(keys[int(j)] for j in order[s:s + batch_size]) for s in range(0, len(keys), batch_size)]


def profile_digest(profile: Profile) -> str:
    """What eq. 5 and the candidate-pair vectors read of a profile: the id its prompt shows, its texts and facts.
    The same digest, the same partition input."""
    payload = [profile.kind, shown_id(profile.id, profile.label), profile.summarization, profile.reasoning,
               profile.facts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PartitionCheck:
    groups: list[tuple[str, str, list[int]]]  # (name, characteristics, members) with members known and unique
    missing: list[int]
    unknown: int = 0
    duplicate: int = 0
    failed: str | None = None


def check_partition(asked: Sequence[int], result) -> PartitionCheck:
    """Keep what the reply says about the asked ids, each id once; list the ids it left out
    (the rules are lagcl.semantic.replies.check_members)."""
    if result is None or result.failed:
        return PartitionCheck([], sorted(set(asked)), failed=(result.failed if result else "no reply"))
    check = check_members(asked, (g.members for g in result.groups))
    groups = [(g.name or "", g.characteristics or "", sorted(members))
              for g, members in zip(result.groups, check.members) if members]
    return PartitionCheck(groups, sorted(set(check.missing)), len(check.unknown), len(check.duplicated))


@dataclass
class PartitionRun:
    batches: int = 0
    sent: int = 0  # batch requests sent in this run (re-asks not included)
    reasked: int = 0  # ids asked a second time
    singletons: int = 0  # ids that ended in a singleton group in this run
    unknown: int = 0
    duplicate: int = 0
    failed: list[str] = field(default_factory=list)


def run_partitions(engine: SemanticEngine, kind: Kind, profiles: dict[int, Profile], batch_ids: list[list[int]],
                   target_group_size: int, sd: StageDir, on_batch: Callable[[int, int], None] | None = None,
                   first_batch: int = 0) -> PartitionRun:
    """Eq. 5 for every batch of one kind not yet in a shard; one shard per batch, written on arrival. Batches are
    numbered from `first_batch` (an incremental run's kept groups hold the previous result's numbers)."""
    done = set(sd.read_shards(PARTITIONS, PARTITIONS_SCHEMA).filter(pl.col("kind") == kind)["batch"].unique().to_list())
    run = PartitionRun(batches=len(batch_ids))
    for b, ids in enumerate(batch_ids, start=first_batch):
        if b in done:
            continue
        run.sent += 1
        first = check_partition(ids, engine.partition(kind, [profiles[i] for i in ids], target_group_size))
        groups, checks = list(first.groups), [first]
        missing = first.missing
        if missing:
            run.reasked += len(missing)
            again = check_partition(missing, engine.partition(kind, [profiles[i] for i in missing], target_group_size))
            groups += again.groups
            checks.append(again)
            missing = again.missing
        for c in checks:
            run.unknown += c.unknown
            run.duplicate += c.duplicate
            if c.failed:
                run.failed.append(f"{kind} batch {b}: {c.failed}")
        run.singletons += len(missing)
        rows: dict[str, list] = {k: [] for k in PARTITIONS_SCHEMA}
        entries = [(n, ch, m, False) for n, ch, m in groups] + [("", "unassigned: own group", [i], True) for i in missing]
        for j, (name, chars, members, single) in enumerate(entries):
            for m in members:
                for k, v in zip(PARTITIONS_SCHEMA, (kind, b, j, name, chars, m, single)):
                    rows[k].append(v)
        sd.write_shard(PARTITIONS, pl.DataFrame(rows, schema=PARTITIONS_SCHEMA))
        if on_batch:
            on_batch(b - first_batch + 1, len(batch_ids))
    return run


@dataclass
class PreviousGroups:
    """One kind's rows of a previous finished result: its group_partitions, group_members, group_similarity."""

    partitions: pl.DataFrame
    members: pl.DataFrame
    similarity: pl.DataFrame


@dataclass
class Carried:
    """What an incremental run takes over from a previous result (`carry_over`)."""

    rows: pl.DataFrame  # PARTITIONS rows of the kept members, under their previous (batch, local_group)
    kept: dict[tuple[int, int], int]  # (batch, local_group) of each kept group -> its previous partition_group
    changed: dict[str, int]  # shown id -> id of each new or changed profile
    next_batch: int  # the first batch number free for the changed profiles


def carry_over(kind: Kind, previous: PreviousGroups, profiles: Sequence[Profile]) -> Carried:
    """Which members keep their previous partition group: those whose shown id and profile digest are unchanged."""
    now = {shown_id(p.id, p.label): (p.id, profile_digest(p)) for p in profiles}
    kept: dict[int, list[int]] = {}  # previous partition_group -> its kept members' ids now
    for shown, digest, g in previous.members.select("shown", "digest", "partition_group").iter_rows():
        if now.get(shown, (None, None))[1] == digest:
            kept.setdefault(g, []).append(now[shown][0])
    rows: dict[str, list] = {k: [] for k in PARTITIONS_SCHEMA}
    for g, b, j, name, chars, single in previous.partitions.sort("partition_group").select(
            "partition_group", "batch", "local_group", "name", "characteristics", "singleton").iter_rows():
        for m in sorted(kept.get(g, ())):
            for k, v in zip(PARTITIONS_SCHEMA, (kind, b, j, name, chars, m, single)):
                rows[k].append(v)
    ids = {m for ms in kept.values() for m in ms}
    changed = {s: i for s, (i, _) in now.items() if i not in ids}
    nxt = int(previous.partitions["batch"].max()) + 1 if previous.partitions.height else 0
    groups = {(b, j): g for g, b, j in previous.partitions.select("partition_group", "batch", "local_group").iter_rows()
              if g in kept}
    return Carried(pl.DataFrame(rows, schema=PARTITIONS_SCHEMA), groups, changed, nxt)


def reuse_similarity(kind: Kind, pg: pl.DataFrame, carried: Carried, previous: PreviousGroups,
                     pairs: list[tuple[int, int]], sd: StageDir) -> int:
    """Eq. 6 for candidate pairs of two kept groups: their previous rating (same names and characteristics),
    written to the similarity shards so `run_similarity` asks only the rest; returns how many pairs it covers."""
    was = {g: carried.kept[(b, j)] for g, b, j in pg.select("partition_group", "batch", "local_group").iter_rows()
           if (b, j) in carried.kept}
    before = {(a, b): s for a, b, s in previous.similarity.select("group_a", "group_b", "similarity").iter_rows()}
    reused = [(a, b, before[key]) for a, b in pairs if a in was and b in was
              and (key := (min(was[a], was[b]), max(was[a], was[b]))) in before]
    rated = sd.read_shards(SIMILARITY, SIMILARITY_SCHEMA).filter(pl.col("kind") == kind)
    done = set(zip(rated["group_a"].to_list(), rated["group_b"].to_list()))
    todo = [r for r in reused if r[:2] not in done]
    if todo:
        sd.write_shard(SIMILARITY, pl.DataFrame(
            {"kind": [kind] * len(todo), "group_a": [a for a, _, _ in todo], "group_b": [b for _, b, _ in todo],
             "similarity": [s for _, _, s in todo]}, schema=SIMILARITY_SCHEMA))
    return len(reused)


def partition_groups(sd: StageDir, kind: Kind) -> pl.DataFrame:
    """(partition_group, batch, local_group, name, characteristics, singleton, members) for one kind,
    numbered in (batch, local_group) order: the groups before merging."""
    df = sd.read_shards(PARTITIONS, PARTITIONS_SCHEMA).filter(pl.col("kind") == kind)
    g = (df.group_by("batch", "local_group").agg(pl.col("name").first(), pl.col("characteristics").first(),
                                                   pl.col("singleton").first(), pl.col("member").sort().alias("members"))
         .sort("batch", "local_group"))
    return g.with_row_index("partition_group").with_columns(pl.col("partition_group").cast(pl.Int32))


def profile_vectors(engine: SemanticEngine, profiles: Sequence[Profile], encoder=None) -> dict[int, np.ndarray]:
    """Unit embeddings of profiles for candidate-pair selection: the engine's own grouping vector when it
    has one (embedding engine), else all-MiniLM-L6-v2 sentence embeddings of the summarization."""
    own = {p.id: engine.profile_vector(p) for p in profiles}
    if all(v is not None for v in own.values()):
        return own
    if encoder is None:
        from lagcl.semantic.embedding import SentenceEncoder

        encoder = SentenceEncoder()
    x = encoder.encode([p.summarization for p in profiles])
    return {p.id: v for p, v in zip(profiles, x)}


def candidate_pairs(centroids: np.ndarray, k: int) -> list[tuple[int, int]]:
    """For each group its k nearest other groups by centroid cosine; pairs (a < b), each once, sorted.

    At most n * k pairs instead of n (n - 1) / 2: the ratings grow near-linearly with the groups."""
    n = len(centroids)
    if n < 2:
        return []
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sim = c @ c.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, n - 1)
    pairs = set()
    for a in range(n):
        # stable sort on (-sim, index): ties go to the smaller id, so the pairs are deterministic
        for b in np.lexsort((np.arange(n), -sim[a]))[:k]:
            pairs.add((min(a, int(b)), max(a, int(b))))
    return sorted(pairs)


def run_similarity(engine: SemanticEngine, kind: Kind, groups: list[Group], pairs: list[tuple[int, int]],
                   sd: StageDir) -> tuple[int, int]:
    """Eq. 6 for the candidate pairs not yet rated; returns (sent, failed). A reply of the wrong length or
    with a value outside [0, 1] fails its whole call (recorded, asked again by the next run)."""
    rated = sd.read_shards(SIMILARITY, SIMILARITY_SCHEMA).filter(pl.col("kind") == kind)
    done = set(zip(rated["group_a"].to_list(), rated["group_b"].to_list()))
    todo = [p for p in pairs if p not in done]
    failed = 0
    for s in range(0, len(todo), SIM_SHARD_PAIRS):
        chunk = todo[s:s + SIM_SHARD_PAIRS]
        sims = engine.similarity([(groups[a], groups[b]) for a, b in chunk])
        ok = len(sims) == len(chunk) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in sims)
        if not ok:
            failed += len(chunk)
            log.warning("groups: unusable similarity reply for %d %s pairs; a rerun asks again", len(chunk), kind)
            continue
        sd.write_shard(SIMILARITY, pl.DataFrame(
            {"kind": [kind] * len(chunk), "group_a": [a for a, _ in chunk], "group_b": [b for _, b in chunk],
             "similarity": [float(v) for v in sims]}, schema=SIMILARITY_SCHEMA))
    return len(todo), failed


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def merge_groups(members: Sequence[Sequence[int]], rated: Sequence[tuple[int, int, float]], tau_sim: float) -> list[int]:
    """Union-find over pairs with similarity > tau_sim; returns the final group of each partition group,
    contiguous and numbered in order of each merged group's smallest member id."""
    uf = UnionFind(len(members))
    for a, b, s in rated:
        if s > tau_sim:
            uf.union(a, b)
    roots = [uf.find(g) for g in range(len(members))]
    smallest: dict[int, int] = {}
    for g, r in enumerate(roots):
        if members[g]:
            smallest[r] = min(smallest.get(r, min(members[g])), min(members[g]))
    order = {r: j for j, r in enumerate(sorted(smallest, key=lambda r: smallest[r]))}
    return [order.get(r, -1) for r in roots]


def group_stats(assign: pl.DataFrame, col: str = "group") -> dict[str, float | int]:
    """Count and size distribution of groups; `same_group_share` is the chance that two random members
    share a group (how many in-batch negatives LA-InfoNCE / LABPR will treat as hard)."""
    sizes = assign.group_by(col).len()["len"].to_numpy()
    n = sizes.sum()
    if not len(sizes):
        return {"groups": 0}
    return {"groups": int(len(sizes)), "members": int(n), "size_one_groups": int((sizes == 1).sum()),
            "size_min": int(sizes.min()), "size_median": float(np.median(sizes)), "size_mean": round(float(sizes.mean()), 2),
            "size_p90": float(np.percentile(sizes, 90)), "size_max": int(sizes.max()),
            "same_group_share": round(float(((sizes / n) ** 2).sum()), 4)}


def genre_purity(item_groups: pl.DataFrame, items: pl.DataFrame) -> float:
    """Share of items that carry their group's most common genre (1.0: every group is one genre)."""
    if "categories" not in items.columns or not item_groups.height:
        return float("nan")
    g = item_groups.join(items.select("item", "categories"), on="item").explode("categories")
    top = (g.group_by("group", "categories").len().sort(["group", "len", "categories"], descending=[False, True, False])
           .group_by("group", maintain_order=True).first().select("group", pl.col("categories").alias("top")))
    hit = g.join(top, on="group").filter(pl.col("categories") == pl.col("top"))["item"].n_unique()
    return round(hit / item_groups["item"].n_unique(), 4)


@dataclass
class KindGroups:
    assignment: pl.DataFrame  # (<kind>, group)
    partitions: pl.DataFrame  # one row per partition group, with its final group
    similarity: pl.DataFrame  # rated candidate pairs
    members: pl.DataFrame  # MEMBERS_SCHEMA: what the next incremental run compares against
    stats: dict


def build_groups(engine: SemanticEngine, kind: Kind, profiles: Sequence[Profile], batch_size: int,
                 target_group_size: int, tau_sim: float, k: int, seed: int, sd: StageDir,
                 on_batch: Callable[[int, int], None] | None = None,
                 previous: PreviousGroups | None = None) -> KindGroups:
    """Eq. 5-6 for one kind: partition in batches, rate candidate pairs, merge above tau_sim. With `previous`
    (incremental): unchanged profiles keep their partition group and only the others are partitioned."""
    by_id = {p.id: p for p in profiles}
    engine.prime(list(profiles))  # same embeddings in fresh and resumed runs
    carried = None
    if previous is None:
        batch_ids, first = batches(list(by_id), batch_size, seed), 0
    else:
        carried = carry_over(kind, previous, profiles)
        written = sd.read_shards(PARTITIONS, PARTITIONS_SCHEMA).filter(
            (pl.col("kind") == kind) & (pl.col("batch") < carried.next_batch))
        if carried.rows.height and not written.height:  # once: a resumed run finds them in its shards
            sd.write_shard(PARTITIONS, carried.rows)
        batch_ids = [[carried.changed[s] for s in b] for b in batches(list(carried.changed), batch_size, seed)]
        first = carried.next_batch
    part = run_partitions(engine, kind, by_id, batch_ids, target_group_size, sd, on_batch, first_batch=first)
    pg = partition_groups(sd, kind)
    members = pg["members"].to_list()
    groups = [Group(kind, n, c, tuple(m)) for n, c, m in zip(pg["name"], pg["characteristics"], members)]
    engine.index_profiles(list(profiles))  # engines that rate groups from their members' profiles
    vec = profile_vectors(engine, profiles)
    centroids = np.stack([np.mean([vec[m] for m in ms], axis=0) for ms in members]) if members else np.zeros((0, 1))
    pairs = candidate_pairs(centroids, k)
    reused = reuse_similarity(kind, pg, carried, previous, pairs, sd) if carried else 0
    sent, failed = run_similarity(engine, kind, groups, pairs, sd)
    wanted = set(pairs)
    rated = [(a, b, s) for a, b, s in sd.read_shards(SIMILARITY, SIMILARITY_SCHEMA).filter(pl.col("kind") == kind)
             .select("group_a", "group_b", "similarity").iter_rows() if (a, b) in wanted]
    final = merge_groups(members, rated, tau_sim)
    partitions = pg.with_columns(pl.Series("group", final, dtype=pl.Int32), pl.col("members").list.len().alias("size"),
                                 pl.lit(kind).alias("kind")).select(
        "kind", "partition_group", "batch", "local_group", "name", "characteristics", "size", "singleton", "group")
    assignment = (pl.DataFrame({kind: [m for ms in members for m in ms],
                                "group": [g for ms, g in zip(members, final) for _ in ms]},
                               schema={kind: pl.Int32, "group": pl.Int32}).sort(kind))
    similarity = pl.DataFrame(
        {"kind": [kind] * len(rated), "group_a": [a for a, _, _ in rated], "group_b": [b for _, b, _ in rated],
         "similarity": [s for _, _, s in rated], "merged": [s > tau_sim for _, _, s in rated]},
        schema={**SIMILARITY_SCHEMA, "merged": pl.Boolean})
    digest = {i: profile_digest(p) for i, p in by_id.items()}
    kept = carried.rows.height if carried else 0
    members_table = pl.DataFrame(
        {"kind": [kind] * sum(map(len, members)), "member": [m for ms in members for m in ms],
         "shown": [shown_id(m, by_id[m].label) for ms in members for m in ms],
         "digest": [digest[m] for ms in members for m in ms],
         "partition_group": [g for g, ms in zip(pg["partition_group"], members) for _ in ms]},
        schema=MEMBERS_SCHEMA).sort("member")
    singles = int(pg.filter(pl.col("singleton"))["members"].list.len().sum()) if pg.height else 0
    stats = {**group_stats(assignment), "profiles_kept": kept, "profiles_partitioned": len(by_id) - kept,
             "similarity_reused": reused, "partition_groups": pg.height, "batches": part.batches,
             "partition_requests_this_run": part.sent, "reasked_ids_this_run": part.reasked,
             "singleton_ids": singles, "unknown_ids_this_run": part.unknown, "duplicate_ids_this_run": part.duplicate,
             "partition_failures_this_run": part.failed[:10], "candidate_pairs": len(pairs), "rated_pairs": len(rated),
             "similarity_sent_this_run": sent, "similarity_failed": failed,
             "merged_pairs": int(sum(s > tau_sim for _, _, s in rated))}
    return KindGroups(assignment, partitions, similarity, members_table, stats)

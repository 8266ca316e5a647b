"""Data-level interaction augmentation for cold-start users (eq. 2-4).

For every cold-start user u (fewer than `cold_threshold` training positives, docs/design.md 4):
- candidates V_u^cand: items with no TRAINING interaction for u, positive or negative (docs/design.md 5;
  valid/test interactions are not looked at, so the held-out targets stay candidates and nothing leaks);
- two independent seeded samples of `n_candidates` (all candidates when fewer; keyed by the raw ids, stable
  when items are added): V_u^sample, scored
  for like (s_uv^pos, eq. 2), and V_u^neg-cand, scored for dislike (s_uv^neg, eq. 3);
- items go to the engine `items_per_call` at a time (one prompt lists several item profiles);
- top `top_fraction` of each polarity -> R_u^pos (sign +1) and R_u^neg (sign -1); R_u^enhanced is their
  union (eq. 4). The sets are disjoint: an item that is also an augmented positive is skipped when
  picking negatives, and the next-ranked dislike takes its place.

Scoring is resumable: requests are grouped in shards of `shard_size` users and every validated
score is written (table `scores`) as soon as its shard is answered. A rerun skips every request whose
items are all scored, so no answered request is sent twice. A reply that cannot be used as given
(unknown, duplicate or missing ids, a score outside [0, 10], another user or polarity, an engine
failure) is recorded in `failures` and never guessed; the next run asks again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import polars as pl

from lagcl.artifacts import StageDir
from lagcl.config import Config
from lagcl.hashing import mix, stable_key
from lagcl.semantic.base import Polarity, Profile, ScoreRequest, ScoreResult, SemanticEngine
from lagcl.semantic.cost import ScoringLoad
from lagcl.semantic.replies import check_scores

log = logging.getLogger("lagcl.augment")

SCORES = "scores"
FAILURES = "failures"
SCORES_SCHEMA = {"user": pl.Int32, "item": pl.Int32, "polarity": pl.String, "score": pl.Float64, "engine": pl.String}
FAILURES_SCHEMA = {"user": pl.Int32, "polarity": pl.String, "chunk": pl.Int32, "items": pl.Int32, "reason": pl.String}
AUGMENTED_SCHEMA = {"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8, "score": pl.Float64}
POLARITIES: tuple[Polarity, Polarity] = ("pos", "neg")


def cold_users(interactions: pl.DataFrame, threshold: int) -> list[int]:
    """Users with fewer than `threshold` training positives (every user of the data, even with none)."""
    pos = (interactions.filter((pl.col("split") == "train") & (pl.col("sign") == 1))
           .group_by("user").len())
    counts = dict(pos.iter_rows())
    users = sorted(interactions["user"].unique().to_list())
    return [u for u in users if counts.get(u, 0) < threshold]


def scoring_load(interactions: pl.DataFrame, n_items: int, cfg: Config) -> ScoringLoad:
    """Each cold-start user's sample size, from the same rules the augment stage uses: every item the user
    has not seen in training, at most augment.n_candidates."""
    cold = cold_users(interactions, cfg.augment.cold_threshold)
    seen = dict(interactions.filter(pl.col("split") == "train").group_by("user").len().iter_rows())
    return ScoringLoad(tuple(min(cfg.augment.n_candidates, n_items - seen.get(u, 0)) for u in cold))


def cold_warm(interactions: pl.DataFrame, users: Sequence[int], threshold: int) -> dict[str, list[int]]:
    """`users` split into cold-start (fewer than `threshold` training positives) and warm, in their order."""
    cold = set(cold_users(interactions, threshold))
    return {"cold": [u for u in users if u in cold], "warm": [u for u in users if u not in cold]}


def candidate_samples(interactions: pl.DataFrame, items: Sequence[int], users: Sequence[int], n: int,
                      seed: int, user_keys: dict[int, object] | None = None,
                      item_keys: dict[int, object] | None = None) -> dict[tuple[int, str], np.ndarray]:
    """(user, polarity) -> sorted sample of up to n candidate items (no training interaction for u).

    Each candidate gets a priority, a hash of (seed, user, polarity, item), and the n lowest are the sample:
    a user's sample does not depend on which other users are in the run (a resumed or partial run samples
    the same items), and when the item set grows it changes by at most the items added (each new item enters
    only by pushing out one). With `user_keys` / `item_keys` (internal id -> the dataset's raw id) the
    priorities follow the raw ids, so a renumbering of the internal ids (a new item sorted before others)
    draws the same items."""
    train = interactions.filter(pl.col("split") == "train").group_by("user").agg("item")
    seen = {u: set(its) for u, its in train.iter_rows()}
    all_items = np.array(sorted(items), dtype=np.int64)
    ikeys = np.array([stable_key(item_keys[int(i)]) if item_keys is not None else int(i) for i in all_items],
                     dtype=np.uint64)
    item_hash = mix(ikeys)
    out: dict[tuple[int, str], np.ndarray] = {}
    for u in users:
        keep = ~np.isin(all_items, list(seen.get(u, ())))
        cand, cand_hash = all_items[keep], item_hash[keep]
        ukey = stable_key(user_keys[int(u)]) if user_keys is not None else int(u)
        for k, pol in enumerate(POLARITIES):
            if len(cand) <= n:
                out[(u, pol)] = cand.copy()
            else:
                base = mix(np.array([stable_key(f"{seed}/{ukey}/{pol}")], dtype=np.uint64))[0]
                with np.errstate(over="ignore"):
                    priority = mix(cand_hash ^ base)
                out[(u, pol)] = np.sort(cand[np.argpartition(priority, n - 1)[:n]])
    return out


@dataclass(frozen=True)
class Chunk:
    """One scoring request: `items_per_call` candidates of one user and one polarity."""

    user: int
    polarity: Polarity
    index: int
    items: tuple[int, ...]


def chunks(samples: dict[tuple[int, str], np.ndarray], items_per_call: int) -> list[Chunk]:
    out = []
    for (u, pol), its in sorted(samples.items(), key=lambda kv: (kv[0][0], POLARITIES.index(kv[0][1]))):
        for j, start in enumerate(range(0, len(its), items_per_call)):
            out.append(Chunk(int(u), pol, j, tuple(int(i) for i in its[start:start + items_per_call])))
    return out


def check_result(chunk: Chunk, result: ScoreResult | None) -> tuple[dict[int, float] | None, str | None]:
    """(scores, None) when the reply can be used exactly as given, else (None, reason); a reply is usable
    when lagcl.semantic.replies.check_scores finds nothing wrong with it."""
    if result is None:
        return None, "no reply"
    if result.failed:
        return None, f"engine: {result.failed}"
    if result.user != chunk.user or result.polarity != chunk.polarity:
        return None, f"reply for user {result.user}/{result.polarity}, asked {chunk.user}/{chunk.polarity}"
    if not isinstance(result.scores, dict):
        return None, "scores missing"
    check = check_scores(chunk.items, result.scores.items())
    if check.twice:
        return None, "duplicate item ids"
    if check.unknown:
        return None, f"unknown item ids {sorted(check.unknown)[:5]}"
    rated = {item for item, _ in check.bad}
    unscored = [i for i in check.missing if str(i) not in rated]
    if unscored:
        return None, f"{len(unscored)} item(s) not scored, e.g. {sorted(unscored)[:5]}"
    if check.bad:
        return None, f"score outside [0, 10]: item {check.bad[0][0]} -> {check.bad[0][1]!r}"
    return check.scores, None


@dataclass
class ScoringRun:
    requests: int  # all chunks of the run
    sent: int  # sent to the engine in this run
    skipped: int  # answered by an earlier run
    failed: int  # still without a usable reply


def run_scoring(engine: SemanticEngine, todo_chunks: Sequence[Chunk], user_profiles: Iterable[Profile],
                item_profiles: Iterable[Profile], sd: StageDir, shard_size: int,
                on_shard: Callable[[int, int], None] | None = None) -> ScoringRun:
    """Send every chunk not yet fully scored, `shard_size` users per engine call; write each shard on arrival.
    Requests carry the profiles' summarizations and facts, and name users and items by the profiles' labels (the
    dataset's own ids) where they have them.

    `on_shard(users_done, users_total)` is called after each shard is written (progress reporting)."""
    users_by_id = {p.id: p for p in user_profiles}
    items_by_id = {p.id: p for p in item_profiles}
    labelled = any(p.label for p in items_by_id.values())
    scored = sd.read_shards(SCORES, SCORES_SCHEMA)
    done_keys = set(zip(scored["user"].to_list(), scored["polarity"].to_list(), scored["item"].to_list()))
    todo = [c for c in todo_chunks if not all((c.user, c.polarity, i) in done_keys for i in c.items)]
    users = sorted({c.user for c in todo})
    all_users = len({c.user for c in todo_chunks})
    if todo:
        # embedding engines: embed every profile of the run up front, so a resumed run computes
        # exactly the scores the uninterrupted run would have (see EmbeddingEngine.prime)
        engine.prime([_bare(users_by_id[u]) for u in sorted({c.user for c in todo_chunks})]
                     + [_bare(items_by_id[i]) for i in sorted({i for c in todo_chunks for i in c.items})])
    failed = 0
    for start in range(0, len(users), shard_size):
        batch_users = set(users[start:start + shard_size])
        batch = [c for c in todo if c.user in batch_users]
        requests = [score_request(c, users_by_id[c.user], [items_by_id[i] for i in c.items], labelled)
                    for c in batch]
        results = engine.score(requests)
        if len(results) != len(requests):
            results = [None] * len(requests)  # cannot tell which reply answers which request
        rows: dict[str, list] = {k: [] for k in SCORES_SCHEMA}
        fails: dict[str, list] = {k: [] for k in FAILURES_SCHEMA}
        for c, res in zip(batch, results):
            scores, reason = check_result(c, res)
            if reason:
                for k, v in zip(FAILURES_SCHEMA, (c.user, c.polarity, c.index, len(c.items), reason)):
                    fails[k].append(v)
                continue
            for i in c.items:
                for k, v in zip(SCORES_SCHEMA, (c.user, i, c.polarity, scores[i], engine.name)):
                    rows[k].append(v)
        if fails["user"]:
            failed += len(fails["user"])
            sd.write_shard(FAILURES, pl.DataFrame(fails, schema=FAILURES_SCHEMA))
            log.warning("augment: %d of %d replies unusable (e.g. %s); a rerun asks again",
                        len(fails["user"]), len(batch), fails["reason"][0])
        if rows["user"]:
            sd.write_shard(SCORES, pl.DataFrame(rows, schema=SCORES_SCHEMA))
        if on_shard:
            on_shard(all_users - len(users) + min(start + shard_size, len(users)), all_users)
    return ScoringRun(len(todo_chunks), len(todo), len(todo_chunks) - len(todo), failed)


def score_request(chunk: Chunk, user: Profile, items: Sequence[Profile], labelled: bool = True) -> ScoreRequest:
    """The eq. 2-3 request of one chunk: the user's and the items' summarizations, labels and facts (`labelled`
    False: the items have no labels, and the request names them by internal id)."""
    return ScoreRequest(chunk.user, user.summarization, chunk.polarity, tuple((p.id, p.summarization) for p in items),
                        user.label, tuple(p.label for p in items) if labelled else (), user.facts,
                        tuple(p.facts for p in items))


def _bare(p: Profile) -> Profile:
    """What `SemanticEngine.prime` embeds of a profile: its summarization and facts."""
    return Profile(p.kind, p.id, p.summarization, "", facts=p.facts)


def top_k(n_sampled: int, fraction: float) -> int:
    """How many of a user's n sampled candidates are kept: the top `fraction`, at least one."""
    return max(1, int(round(fraction * n_sampled))) if n_sampled else 0


def select_augmented(scores: pl.DataFrame, sample_sizes: dict[tuple[int, str], int], fraction: float) -> pl.DataFrame:
    """Eq. 2-4: per user the top `fraction` of like scores (sign +1) and of dislike scores (sign -1).

    k comes from the sample size, not from the number scored, so a failed chunk does not change how
    many items a user gets. Ties go to the smaller item id. Negatives skip the user's new positives."""
    scores = scores.unique(["user", "polarity", "item"], keep="first").sort(
        ["user", "polarity", "score", "item"], descending=[False, False, True, False])
    out: dict[str, list] = {k: [] for k in AUGMENTED_SCHEMA}
    by = {(u, p): (its, ss) for u, p, its, ss in
          scores.group_by(["user", "polarity"], maintain_order=True).agg("item", "score").iter_rows()}
    for u in sorted({u for u, _ in by}):
        pos_items, pos_scores = by.get((u, "pos"), ([], []))
        k_pos = top_k(sample_sizes.get((u, "pos"), len(pos_items)), fraction)
        chosen = set(pos_items[:k_pos])
        for i, s in zip(pos_items[:k_pos], pos_scores[:k_pos]):
            out["user"].append(u), out["item"].append(i), out["sign"].append(1), out["score"].append(s)
        neg_items, neg_scores = by.get((u, "neg"), ([], []))
        k_neg = top_k(sample_sizes.get((u, "neg"), len(neg_items)), fraction)
        picked = 0
        for i, s in zip(neg_items, neg_scores):
            if picked == k_neg:
                break
            if i in chosen:
                continue
            out["user"].append(u), out["item"].append(i), out["sign"].append(-1), out["score"].append(s)
            picked += 1
    return pl.DataFrame(out, schema=AUGMENTED_SCHEMA)


def augment_quality(augmented: pl.DataFrame, scores: pl.DataFrame, interactions: pl.DataFrame,
                    items: pl.DataFrame) -> dict[str, float | int]:
    """How well the augmented interactions agree with what the data knows but the engine never saw.

    Held-out here means the user's VALIDATION positives only: these figures may inform choices (the gate),
    and no choice may look at test (docs/design.md 13).

    - pos_precision: share of augmented positives that are among the user's validation positives;
      pos_random_precision: the same for as many candidates drawn at random from the user's scored
      like-sample (its exact expectation: |sample & held-out| / |sample| per user, weighted by the
      user's augmented count); pos_lift = their ratio (> 1: the engine finds held-out likes).
    - neg_heldout_precision / neg_random_precision / neg_heldout_ratio: the same for augmented
      negatives against validation POSITIVES; a good dislike score puts few of them there (ratio < 1).
      We cannot check augmented negatives against known dislikes: every known dislike (sign -1) is a
      training interaction and so is excluded from the candidates (docs/design.md 5).
    - dislike_lean_{neg,pos,random}: mean, over items, of the user's genre dislike lean
      mean_g log((#train dislikes in g + 1) / (#train likes in g + 1)) over the item's genres; augmented
      negatives should lean more to the user's disliked genres than random candidates, positives less.
    """
    held = interactions.filter((pl.col("sign") == 1) & (pl.col("split") == "valid")).select(
        "user", "item").with_columns(pl.lit(True).alias("heldout"))
    out: dict[str, float | int] = {"users": int(augmented["user"].n_unique()) if augmented.height else 0}
    for sign, pol in ((1, "pos"), (-1, "neg")):
        aug = augmented.filter(pl.col("sign") == sign).join(held, on=["user", "item"], how="left")
        n = aug.height
        hits = int(aug["heldout"].fill_null(False).sum()) if n else 0
        samp = (scores.filter(pl.col("polarity") == pol).select("user", "item").unique()
                .join(held, on=["user", "item"], how="left")
                .group_by("user").agg((pl.col("heldout").fill_null(False).sum() / pl.len()).alias("rate")))
        per_user = aug.group_by("user").len().join(samp, on="user", how="left")
        rand = float((per_user["len"] * per_user["rate"].fill_null(0)).sum() / n) if n else 0.0
        prec = hits / n if n else 0.0
        key = "pos" if sign == 1 else "neg_heldout"
        out[f"{'pos' if sign == 1 else 'neg'}_count"] = n
        out[f"{key}_precision"] = round(prec, 5)
        out[f"{'pos' if sign == 1 else 'neg'}_random_precision"] = round(rand, 5)
        out["pos_lift" if sign == 1 else "neg_heldout_ratio"] = round(prec / rand, 4) if rand else float("nan")
    if "categories" in items.columns:
        frames = (("neg", augmented.filter(pl.col("sign") == -1)), ("pos", augmented.filter(pl.col("sign") == 1)),
                  ("random", scores.filter(pl.col("polarity") == "neg").select("user", "item").unique()))
        lean = _genre_lean(interactions, items, pl.concat([f.select("user", "item") for _, f in frames]))
        for name, frame in frames:
            vals = frame.join(lean, on=["user", "item"], how="inner")["lean"]
            out[f"dislike_lean_{name}"] = round(float(vals.mean()), 4) if len(vals) else float("nan")
    return out


def _genre_lean(interactions: pl.DataFrame, items: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """(user, item, lean) for the given pairs of users with training interactions: mean over the item's genres
    of log((dislikes+1)/(likes+1)) of the user in training. Only the pairs asked for: a table over every user
    and every item grows with users x items (7 GB at ML-1M's shape, BENCHMARKS.md "The paper's sizes")."""
    genres = items.select("item", pl.col("categories").alias("genre")).explode("genre").drop_nulls()
    train = interactions.filter(pl.col("split") == "train").select("user", "item", "sign")
    counts = (train.join(genres, on="item").group_by("user", "genre")
              .agg((pl.col("sign") == -1).sum().alias("dis"), (pl.col("sign") == 1).sum().alias("like")))
    wanted = pairs.select("user", "item").unique().join(train.select("user").unique(), on="user")
    return (wanted.join(genres, on="item").join(counts, on=["user", "genre"], how="left")
            .with_columns((((pl.col("dis").fill_null(0) + 1) / (pl.col("like").fill_null(0) + 1)).log()).alias("lean_g"))
            .group_by("user", "item").agg(pl.col("lean_g").mean().alias("lean")))

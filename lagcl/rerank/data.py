"""The reranker's inputs (eq. 13-15): candidate sets C_u, prompt texts I_u and labels.

For each user u, C_u is the CF model's top-K (`rerank.candidates`) of `cf_topk`, which the CF model drew
from the items u has no training interaction with. One example per pair (u, v in C_u) renders
I_u = {P_u, C_u, R_u^pos-hist, R_u^neg-hist} (eq. 13) with the CoT template S_cot (Figure 19), focused
on the single candidate v (eq. 14).

Labels (docs/design.md decision 10): the paper's y_uv = 1[(u, v) in R_train] (eq. 15) is always 0 here,
because the CF model masks training items out of C_u; so y_uv = 1[(u, v) in R_valid]. The test split is
dropped on entry (`without_test`): no test interaction can reach a label or a history. Users are split
into a training part and a hold-out part (`rerank.holdout_users`): the reranker learns from the first,
and the fusion grid search (eq. 19-20) tunes alpha and tau on the validation labels of the second,
which the reranker never saw.

History: liked = training positives (highest rating, then newest, first); disliked = training negatives
(ratings <= threshold, lowest first) followed by the augment stage's negatives (eq. 2-4, highest
confidence first); at most `rerank.history` each. Only training interactions: the same history is shown
at training and at inference time, as Lemma 4 (Appendix B.5) asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from lagcl.errors import DataError

TRAIN, HOLDOUT = "train", "holdout"


def without_test(interactions: pl.DataFrame) -> pl.DataFrame:
    """The interactions the rerank stage may see: train and valid only (test labels wait for `evaluate`)."""
    return interactions.filter(pl.col("split") != "test")


def candidate_sets(cf_topk: pl.DataFrame, k: int) -> pl.DataFrame:
    """C_u: each user's CF top-k, as (user, item, cf_score, cf_rank) with cf_rank 1..k."""
    if k <= 0:
        return pl.DataFrame(schema={"user": pl.Int32, "item": pl.Int32, "cf_score": pl.Float64, "cf_rank": pl.Int32})
    have = int(cf_topk["rank"].max()) if cf_topk.height else 0
    if have < k:
        raise DataError(f"cf_topk holds {have} items per user but rerank.candidates={k}; lower rerank.candidates "
                        f"or raise gcl.topk_out")
    return (cf_topk.filter(pl.col("rank") <= k)
            .select(pl.col("user").cast(pl.Int32), pl.col("item").cast(pl.Int32),
                    pl.col("score").cast(pl.Float64).alias("cf_score"), pl.col("rank").cast(pl.Int32).alias("cf_rank"))
            .sort("user", "cf_rank"))


def split_users(users: np.ndarray, holdout: float, seed: int) -> dict[int, str]:
    """Seeded user split: `holdout` of the users go to the fusion grid search, the rest train the reranker."""
    users = np.unique(users)
    rng = np.random.default_rng(seed)
    n_hold = int(round(holdout * users.size))
    hold = set(rng.choice(users, size=n_hold, replace=False).tolist()) if n_hold else set()
    return {int(u): (HOLDOUT if u in hold else TRAIN) for u in users}


def sample_users(users: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """`rerank.max_users`: a seeded sample of users (trials on slow hardware), all users when n is None."""
    users = np.unique(users)
    if n is None or n >= users.size:
        return users
    return np.sort(np.random.default_rng(seed + 1).choice(users, size=n, replace=False))


def histories(interactions: pl.DataFrame, augmented: pl.DataFrame | None, n: int) -> pl.DataFrame:
    """(user, liked: list[int], disliked: list[int]) from training interactions and augmented negatives."""
    train = without_test(interactions).filter(pl.col("split") == "train")
    liked = (train.filter(pl.col("sign") > 0).sort(["user", "rating", "timestamp"], descending=[False, True, True])
             .group_by("user", maintain_order=True).agg(pl.col("item").head(n).alias("liked")))
    neg = train.filter(pl.col("sign") < 0).sort(["user", "rating", "timestamp"], descending=[False, False, True])
    neg = neg.select("user", "item", pl.lit(0, dtype=pl.Int32).alias("source"), pl.col("rating").alias("order"))
    if augmented is not None and augmented.height:
        aug = augmented.filter(pl.col("sign") < 0).sort(["user", "score"], descending=[False, True])
        neg = pl.concat([neg, aug.select(pl.col("user").cast(pl.Int32), pl.col("item").cast(pl.Int32),
                                         pl.lit(1, dtype=pl.Int32).alias("source"),
                                         (-pl.col("score").cast(pl.Float64)).alias("order"))])
    disliked = (neg.sort(["user", "source", "order"]).unique(["user", "item"], keep="first", maintain_order=True)
                .group_by("user", maintain_order=True).agg(pl.col("item").head(n).alias("disliked")))
    return liked.join(disliked, on="user", how="full", coalesce=True).with_columns(
        pl.col("liked").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
        pl.col("disliked").fill_null(pl.lit([], dtype=pl.List(pl.Int32))))


def fallback_profiles(users: pl.DataFrame, items: pl.DataFrame) -> tuple[dict[int, str], dict[int, str]]:
    """Profile texts from metadata, used while the profiles stage is off or not built (title, genres, year)."""
    def user_text(r: dict) -> str:
        parts = [f"{k}: {r[k]}" for k in ("age", "gender", "occupation") if r.get(k) not in (None, "")]
        return "A user (" + ", ".join(parts) + ")." if parts else "A user."

    def item_text(r: dict) -> str:
        text = str(r.get("title") or f"item {r['item']}")
        if r.get("year"):
            text += f" ({r['year']})"
        if r.get("categories"):
            text += ". Genres: " + ", ".join(r["categories"])
        return text + "."

    return ({int(r["user"]): user_text(r) for r in users.iter_rows(named=True)},
            {int(r["item"]): item_text(r) for r in items.iter_rows(named=True)})


def item_titles(items: pl.DataFrame) -> dict[int, str]:
    """Short item names for history lines and candidate lists (title and year)."""
    out = {}
    for r in items.iter_rows(named=True):
        t = str(r.get("title") or f"item {r['item']}")
        out[int(r["item"])] = f"{t} ({r['year']})" if r.get("year") else t
    return out


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(0, n - 1)].rstrip() + "…"


@dataclass
class PromptBuilder:
    """Renders I_u for one (u, v): `cot` is the paper's Figure 19 template, `compact` the same fields
    without the instructions and with the candidate first, so a short context never truncates it."""

    user_profiles: dict[int, str]
    item_profiles: dict[int, str]
    titles: dict[int, str]
    fmt: Literal["cot", "compact"] = "cot"
    profile_chars: int = 400
    domain: str = "item"

    def __post_init__(self) -> None:
        if self.fmt == "cot":
            from lagcl.semantic.prompts import Prompts

            self._prompts = Prompts(self.domain)

    def render(self, user: int, item: int, cf_rank: int, candidates: list[int], liked: list[int],
               disliked: list[int]) -> str:
        up = _cut(self.user_profiles.get(user, "A user."), self.profile_chars)
        ip = _cut(self.item_profiles.get(item, self.titles.get(item, f"item {item}")), self.profile_chars)
        if self.fmt == "compact":
            return (f"Candidate: {ip} CF rank {cf_rank} of {len(candidates)}. "
                    f"Liked: {'; '.join(self.titles.get(i, str(i)) for i in liked) or 'none'}. "
                    f"Disliked: {'; '.join(self.titles.get(i, str(i)) for i in disliked) or 'none'}. "
                    f"User: {up}")
        system, text = self._prompts.rerank(
            user, up, [(c, self.titles.get(c, str(c))) for c in candidates],
            liked=[(i, _cut(self.item_profiles.get(i, self.titles.get(i, str(i))), self.profile_chars // 2))
                   for i in liked],
            disliked=[(i, _cut(self.item_profiles.get(i, self.titles.get(i, str(i))), self.profile_chars // 2))
                      for i in disliked],
            item=(item, ip))
        return system + "\n\n" + text


def build_pairs(cands: pl.DataFrame, interactions: pl.DataFrame, hist: pl.DataFrame, prompts: PromptBuilder | None,
                roles: dict[int, str]) -> pl.DataFrame:
    """Every (u, v in C_u) of the users in `roles`: (user, item, cf_score, cf_rank, role, label, text); without
    `prompts` (the late-interaction reranker reads no prompt) there is no `text` column.

    label = 1 if (u, v) is a validation positive (decision 10); test interactions are never read.
    """
    seen = without_test(interactions)
    valid_pos = seen.filter((pl.col("split") == "valid") & (pl.col("sign") > 0)).select(
        pl.col("user").cast(pl.Int32), pl.col("item").cast(pl.Int32), pl.lit(1.0).alias("label"))
    role_df = pl.DataFrame({"user": list(roles), "role": list(roles.values())}, schema={"user": pl.Int32, "role": pl.String})
    pairs = (cands.join(role_df, on="user", how="inner")
             .join(valid_pos, on=["user", "item"], how="left").with_columns(pl.col("label").fill_null(0.0))
             .sort("user", "cf_rank"))
    if prompts is None:
        return pairs
    cand_lists = pairs.group_by("user", maintain_order=True).agg(pl.col("item").alias("cands"))
    by_user = {r["user"]: r for r in cand_lists.join(hist, on="user", how="left").iter_rows(named=True)}
    texts = []
    for u, v, rank in zip(pairs["user"].to_list(), pairs["item"].to_list(), pairs["cf_rank"].to_list()):
        r = by_user[u]
        texts.append(prompts.render(u, v, rank, r["cands"], r["liked"] or [], r["disliked"] or []))
    return pairs.with_columns(pl.Series("text", texts, dtype=pl.String))


def training_examples(pairs: pl.DataFrame, neg_per_pos: int | None, max_pairs: int | None, seed: int) -> pl.DataFrame:
    """D_rer of eq. 15 from the training users: every positive, `neg_per_pos` sampled negatives per positive
    (C_u holds about one validation positive in twenty, and BCE on that imbalance learns mostly the prior),
    then at most `max_pairs` pairs, seeded and shuffled."""
    train = pairs.filter(pl.col("role") == TRAIN)
    pos, neg = train.filter(pl.col("label") > 0), train.filter(pl.col("label") == 0)
    if pos.height == 0:
        raise DataError("no validation positive falls inside any training user's candidate set C_u; raise "
                        "rerank.candidates or check the gcl stage's cf_topk")
    if neg_per_pos is not None and neg.height > neg_per_pos * pos.height:
        neg = neg.sample(n=neg_per_pos * pos.height, seed=seed)
    out = pl.concat([pos, neg]).sample(fraction=1.0, shuffle=True, seed=seed)
    if max_pairs is not None and out.height > max_pairs:
        out = out.head(max_pairs)
    return out

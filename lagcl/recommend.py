"""The pipeline's product: the top-N recommendations per user, from the final ranking the run chose.

`recommendations` builds them from the same lists the evaluate stage scores (lagcl.rerank.fusion): for the
users the reranker scored, when the run kept it, the fused ranking (eq. 19-21: C_u reordered by
s_final, then the rest of the CF ranking); for every other user, and when the reranker was left out, the CF
model's ranking. Known items are never recommended (`recommend.exclude`): training positives are masked in
cf_topk already, and here `rated` (the default) removes every other item the user interacted with in training
and validation, liked or disliked, `positives` only the validation positives. Each setting masks exactly what
one test protocol of the metrics masks (`PROTOCOL`; lagcl/measure.py PROTOCOLS and split_sets): `rated` the
"dislikes masked" protocol (training and validation positives and the training dislikes; every dislike
carries split "train"), `positives` the "all" protocol. So the first 20 rows of each user reproduce the
test Recall@20 / NDCG@20 of that protocol (the evaluate manifest's `recommendations` entry records it).

Columns: `user`, `rank` (1 = best), `item`, `score` (s_final of eq. 19 where the fusion placed the item, the
CF score otherwise), `user_raw` / `item_raw` (the dataset's own ids), `cf_rank` / `cf_score` (where the CF
model had the item) and `source` ("rerank": placed by the fusion of eq. 21, "cf": by the CF model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from lagcl.artifacts import read_manifest, read_table
from lagcl.errors import LagclError
from lagcl.evaluate import UserItems
from lagcl.rerank.fusion import CandidateMatrix, fuse, ranked_lists

SCHEMA = {"user": pl.Int32, "rank": pl.Int32, "item": pl.Int32, "score": pl.Float64, "user_raw": pl.String,
          "item_raw": pl.String, "cf_rank": pl.Int32, "cf_score": pl.Float64, "source": pl.String}

# recommend.exclude -> the test protocol (lagcl/measure.py PROTOCOLS) that masks the same items
PROTOCOL = {"rated": "dislikes masked", "positives": "all"}


def excluded_items(interactions: pl.DataFrame, exclude: str, n_users: int, n_items: int) -> UserItems:
    """The items the table never recommends to each user: every training and validation interaction of either
    sign for `rated`, their positives only for `positives`. At test time this is what the matching protocol
    masks: training and validation positives, plus for "dislikes masked" the training dislikes."""
    if exclude not in PROTOCOL:
        raise ValueError(f"recommend.exclude {exclude!r}: rated or positives")
    known = interactions.filter(pl.col("split").is_in(["train", "valid"]))
    if exclude == "positives":
        known = known.filter(pl.col("sign") > 0)
    return UserItems.from_pairs(torch.from_numpy(known["user"].to_numpy().astype("int64")),
                                torch.from_numpy(known["item"].to_numpy().astype("int64")), n_users, n_items)


def _lists(mat: CandidateMatrix, alpha: float, tau: float, n: int, exclude) -> pl.DataFrame:
    """Long (user, rank, item, score, source) rows of the top-n lists of `mat`'s users."""
    ranked = ranked_lists(mat, alpha, tau, n, exclude, pad=-1)
    users = np.repeat(mat.users, ranked.shape[1])
    ranks = np.tile(np.arange(1, ranked.shape[1] + 1), mat.users.size)
    out = pl.DataFrame({"user": users, "rank": ranks, "item": ranked.reshape(-1)},
                       schema={"user": pl.Int64, "rank": pl.Int64, "item": pl.Int64}).filter(pl.col("item") >= 0)
    # drop the padding, then number the rest again (only the padding is ever removed, at the end of a list)
    out = out.with_columns(pl.int_range(1, pl.len() + 1).over("user").alias("rank"))
    if not mat.k:
        return out.with_columns(pl.lit(None, dtype=pl.Float64).alias("fused"))
    fused = fuse(mat.cf, mat.llm, alpha, tau)
    cand = pl.DataFrame({"user": np.repeat(mat.users, mat.k), "item": mat.items[:, :mat.k].reshape(-1),
                         "fused": fused.reshape(-1)}, schema={"user": pl.Int64, "item": pl.Int64,
                                                              "fused": pl.Float64})
    return out.join(cand, on=["user", "item"], how="left")


def recommendations(cf_topk: pl.DataFrame, interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame,
                    n: int, rerank_scores: pl.DataFrame | None = None, k: int = 0, alpha: float = 1.0,
                    tau: float = 1.0, fused_users: list[int] | None = None, exclude: str = "rated") -> pl.DataFrame:
    """Top-`n` per user of `users` (the prepare table: user, raw_id) from `cf_topk(user, item, score, rank)`
    (fewer where the CF list holds fewer items once the `exclude` items, `excluded_items`, are removed).
    With `k` > 0 the users of `fused_users` get the fusion of eq. 19-21 with `rerank_scores`, at (alpha, tau)."""
    n_users, n_items = users.height, items.height
    all_users = users["user"].to_list()
    have = set(cf_topk["user"].unique().to_list())
    missing = [u for u in all_users if u not in have]
    if missing:
        raise LagclError(f"{len(missing)} user(s) have no CF ranking (e.g. user {missing[0]}); the gcl stage's "
                         "cf_topk must cover every user: rerun it with FROM=gcl")
    known = excluded_items(interactions, exclude, n_users, n_items)
    fused = sorted(set(fused_users or [])) if k else []
    parts = []
    if fused:
        parts.append(_lists(CandidateMatrix.build(cf_topk, rerank_scores, k, fused), alpha, tau, n, known))
    rest = sorted(set(all_users) - set(fused))
    if rest:
        parts.append(_lists(CandidateMatrix.build(cf_topk, None, 0, rest), 1.0, tau, n, known))
    out = pl.concat(parts, how="vertical")
    cf = cf_topk.select(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64),
                        pl.col("rank").cast(pl.Int32).alias("cf_rank"), pl.col("score").cast(pl.Float64)
                        .alias("cf_score"))
    out = out.join(cf, on=["user", "item"], how="left")
    out = out.with_columns(
        pl.coalesce("fused", "cf_score").alias("score"),
        pl.when(pl.col("fused").is_not_null()).then(pl.lit("rerank")).otherwise(pl.lit("cf")).alias("source"),
    )
    out = (out.join(users.select(pl.col("user").cast(pl.Int64), pl.col("raw_id").alias("user_raw")), on="user")
           .join(items.select(pl.col("item").cast(pl.Int64), pl.col("raw_id").alias("item_raw")), on="item"))
    return out.select([pl.col(c).cast(t) for c, t in SCHEMA.items()]).sort("user", "rank")


# --- looking at one user: `lagcl recommend --user <original id>` ------------------------------------------
def _table(folder: Path | None, name: str) -> pl.DataFrame | None:
    """A table of a finished stage folder (checksums checked), or None when the stage is not part of the run."""
    if folder is None or not (folder / "manifest.json").is_file():
        return None
    return read_table(folder, name)


def explain_user(folders: dict[str, Path], user_raw: str, n: int | None = None) -> list[str]:
    """The lines `lagcl recommend` prints for one user, from the finished stage folders of one run
    (`folders`: stage -> folder; prepare, gcl and evaluate are needed, profiles / augment / rerank are read
    when the run had them): profile, top-n with titles, the level that put each item where it is, and the
    LLM's words where it gave any (profile reasoning, augment scores)."""
    prep, ev = folders["prepare"], folders["evaluate"]
    users, items = read_table(prep, "users"), read_table(prep, "items")
    row = users.filter(pl.col("raw_id") == str(user_raw))
    if row.is_empty():
        sample = ", ".join(users["raw_id"].head(5).to_list())
        raise LagclError(f"user '{user_raw}' is not in this run's data: give one of the dataset's original user "
                         f"ids, e.g. {sample} (users removed by the k-core filter have no recommendations)")
    u = int(row["user"][0])
    rec = read_table(ev, "recommendations").filter(pl.col("user") == u).sort("rank")
    if n is not None:
        rec = rec.head(n)
    ev_meta = read_manifest(ev)["meta"]
    gcl_meta = read_manifest(folders["gcl"])["meta"]
    inter = read_table(prep, "interactions").filter(pl.col("user") == u)
    titles = dict(zip(items["item"].to_list(), items["title"].to_list()))
    attrs = {k: v for k, v in row.row(0, named=True).items() if k not in ("user", "raw_id") and v not in (None, "")}
    pos = inter.filter((pl.col("sign") > 0) & (pl.col("split") == "train")).sort("rating", "timestamp",
                                                                                   descending=True)
    lines = [f"user {user_raw} (internal {u})" + (": " + ", ".join(f"{k} {v}" for k, v in attrs.items())
                                                   if attrs else ""),
             f"  {pos.height} training likes, {inter.filter(pl.col('sign') < 0).height} dislikes; liked e.g.: "
             + "; ".join(titles.get(i, str(i)) for i in pos["item"].head(5).to_list())]
    profiles = _table(folders.get("profiles"), "user_profiles")
    if profiles is not None:
        p = profiles.filter(pl.col("user") == u)
        if p.height:
            lines += [f"  profile: {p['summarization'][0]}", f"  profile reasoning: {p['reasoning'][0]}"]
    scores = _table(folders.get("augment"), "scores")
    augmented = _table(folders.get("augment"), "augmented")
    llm = {} if scores is None else {(r["item"], r["polarity"]): r["score"]
                                     for r in scores.filter(pl.col("user") == u).iter_rows(named=True)}
    aug = set() if augmented is None else set(
        augmented.filter((pl.col("user") == u) & (pl.col("sign") > 0))["item"].to_list())
    item_profiles = _table(folders.get("profiles"), "item_profiles")
    reasons = {} if item_profiles is None else dict(zip(item_profiles["item"].to_list(),
                                                        item_profiles["reasoning"].to_list()))
    cf_name = gcl_meta.get("variant") or "control"
    # a table written before recommend.exclude existed left out the positives only
    left_out = ("every item rated in training or validation left out" if
                (ev_meta.get("recommendations") or {}).get("exclude", "positives") == "rated" else
                "liked items left out, known dislikes may appear")
    lines.append(f"top {rec.height} ({ev_meta.get('headline_variant')}; CF model: {gcl_meta.get('backbone')} "
                 f"'{cf_name}'; {left_out}):")
    for r in rec.iter_rows(named=True):
        if r["source"] == "rerank":
            where = f"reranker (eq. 21): CF rank {r['cf_rank']} -> {r['rank']}"
        else:
            where = f"CF model '{cf_name}' rank {r['cf_rank']}"
        if r["item"] in aug:
            where += "; data level: an LLM-augmented positive of this user"
        lines.append(f"  {r['rank']:>3}. {titles.get(r['item'], r['item_raw'])} [{r['item_raw']}] score "
                     f"{r['score']:.4f}; placed by {where}")
        said = [f"LLM {pol} score {llm[(r['item'], pol)]:.2f}" for pol in ("pos", "neg") if (r["item"], pol) in llm]
        if said:
            lines.append("       " + ", ".join(said))
        if reasons.get(r["item"]):
            lines.append(f"       item profile reasoning: {reasons[r['item']]}")
    return lines

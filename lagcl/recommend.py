"""The pipeline's product: the top-N recommendations per user, from the final ranking the run chose.

`recommendations` builds them from the same lists the evaluate stage scores (lagcl.rerank.fusion): for the
users the reranker scored, when the run kept it, the fused ranking (eq. 19-21: C_u reordered by
s_final, then the rest of the CF ranking); for every other user, and when the reranker was left out, the CF
model's ranking. Known items are never recommended: training positives are masked in cf_topk already, and
validation positives are removed here, exactly as the test metrics do, so the first 20 rows of each user
reproduce the reported test Recall@20 / NDCG@20.

Columns: `user`, `rank` (1 = best), `item`, `score` (s_final of eq. 19 where the fusion placed the item, the
CF score otherwise), `user_raw` / `item_raw` (the dataset's own ids), `cf_rank` / `cf_score` (where the CF
model had the item) and `source` ("rerank": placed by the fusion of eq. 21, "cf": by the CF model).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lagcl.errors import LagclError
from lagcl.rerank.fusion import CandidateMatrix, fuse, ranked_lists, user_items

SCHEMA = {"user": pl.Int32, "rank": pl.Int32, "item": pl.Int32, "score": pl.Float64, "user_raw": pl.String,
          "item_raw": pl.String, "cf_rank": pl.Int32, "cf_score": pl.Float64, "source": pl.String}


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
                    tau: float = 1.0, fused_users: list[int] | None = None) -> pl.DataFrame:
    """Top-`n` per user of `users` (the prepare table: user, raw_id) from `cf_topk(user, item, score, rank)`
    (fewer where the CF list holds fewer items once the user's validation positives are removed).
    With `k` > 0 the users of `fused_users` get the fusion of eq. 19-21 with `rerank_scores`, at (alpha, tau)."""
    n_users, n_items = users.height, items.height
    all_users = users["user"].to_list()
    have = set(cf_topk["user"].unique().to_list())
    missing = [u for u in all_users if u not in have]
    if missing:
        raise LagclError(f"{len(missing)} user(s) have no CF ranking (e.g. user {missing[0]}); the gcl stage's "
                         "cf_topk must cover every user: rerun it with FROM=gcl")
    exclude = user_items(interactions, "valid", n_users, n_items)
    fused = sorted(set(fused_users or [])) if k else []
    parts = []
    if fused:
        parts.append(_lists(CandidateMatrix.build(cf_topk, rerank_scores, k, fused), alpha, tau, n, exclude))
    rest = sorted(set(all_users) - set(fused))
    if rest:
        parts.append(_lists(CandidateMatrix.build(cf_topk, None, 0, rest), 1.0, tau, n, exclude))
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

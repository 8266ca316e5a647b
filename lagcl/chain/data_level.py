"""The data level as training signal: which LLM-augmented interactions reach training (eq. 2-4 read with
docs/design.md 13), and how their precision compares with the control model's own.

An augmented positive is weaker evidence than an observed one: the paper's reading (top 2% of 1024
candidates, full weight) gives each cold user ~20 positives, piled onto hub items, and far less precise
than the control's own top-20 for the same users (BENCHMARKS.md: the augment stage's precision, and the
gate's data check in "Levels against the control"). So the calibrated reading (`data_level.reading:
calibrated`) keeps few, surer items per user:

- item-centred like scores, s_uv - mean_u' s_u'v over the scored users (a hub that every user "likes"
  stops winning for everyone);
- at most `max_per_user` and `cap_ratio` x the user's real training positives (at least one);
- only items the control model ranks within `prune_rank` for that user;
- the augment stage's augmented negatives (eq. 3) join the dislike pool, minus the new positives.

`hit_rate` and `control_hit_rate` are the gate's pre-check: both against VALIDATION positives only;
`data_level_plan` gives the data-level variants the gcl stage trains, or why none is trained.
"""

from __future__ import annotations

import math

import polars as pl

from lagcl.augment import AUGMENTED_SCHEMA
from lagcl.chain.fit import Variant
from lagcl.config import DataLevelConfig, GateConfig


def centred_like_scores(scores: pl.DataFrame, centre: bool = True) -> pl.DataFrame:
    """(user, item, score) of the like polarity; with `centre` each item's mean score over the users who
    scored it is subtracted (hubness correction)."""
    like = scores.filter(pl.col("polarity") == "pos").unique(["user", "item"], keep="first", maintain_order=True)
    if centre:
        like = like.with_columns(pl.col("score") - pl.col("score").mean().over("item"))
    return like.select("user", "item", "score")


def train_positive_counts(interactions: pl.DataFrame) -> pl.DataFrame:
    return (interactions.filter((pl.col("split") == "train") & (pl.col("sign") == 1))
            .group_by("user").agg(pl.len().alias("n_train")))


def select_calibrated(scores: pl.DataFrame, interactions: pl.DataFrame, cfg: DataLevelConfig,
                      control_topk: pl.DataFrame | None = None, negatives: pl.DataFrame | None = None
                      ) -> pl.DataFrame:
    """The augmented table (AUGMENTED_SCHEMA) of the calibrated reading. `control_topk` (user, item, rank)
    prunes positives outside the control's top `prune_rank`; `negatives` (the augment stage's sign -1 rows)
    are kept, except where they became a positive."""
    like = centred_like_scores(scores, cfg.centre)
    if cfg.prune_rank is not None and control_topk is not None:
        keep = control_topk.filter(pl.col("rank") <= cfg.prune_rank).select("user", "item")
        like = like.join(keep, on=["user", "item"], how="semi")
    counts = train_positive_counts(interactions)
    cap = (pl.min_horizontal(pl.lit(cfg.max_per_user),
                             pl.max_horizontal(pl.lit(1), (pl.col("n_train").fill_null(0) * cfg.cap_ratio).ceil()
                                               .cast(pl.Int64))))
    pos = (like.join(counts, on="user", how="left").with_columns(cap.alias("cap"))
           .sort(["user", "score", "item"], descending=[False, True, False])
           .filter(pl.int_range(pl.len()).over("user") < pl.col("cap"))
           .select(pl.col("user").cast(pl.Int32), pl.col("item").cast(pl.Int32), pl.lit(1, pl.Int8).alias("sign"),
                   pl.col("score").cast(pl.Float64)))
    parts = [pos]
    if negatives is not None and negatives.height:
        neg = negatives.filter(pl.col("sign") < 0).join(pos.select("user", "item"), on=["user", "item"], how="anti")
        parts.append(neg.select(list(AUGMENTED_SCHEMA)).cast(AUGMENTED_SCHEMA))
    return pl.concat(parts).sort(["user", "sign", "score", "item"], descending=[False, True, True, False])


def validation_positives(interactions: pl.DataFrame) -> pl.DataFrame:
    return interactions.filter((pl.col("split") == "valid") & (pl.col("sign") == 1)).select("user", "item")


def hit_rate(pairs: pl.DataFrame, truth: pl.DataFrame) -> float:
    """Share of (user, item) pairs that are in `truth` (precision against held-out positives)."""
    if pairs.height == 0:
        return 0.0
    return pairs.select("user", "item").join(truth, on=["user", "item"], how="semi").height / pairs.height


def control_hit_rate(control_topk: pl.DataFrame, interactions: pl.DataFrame, k_per_user: pl.DataFrame,
                     truth: pl.DataFrame) -> float:
    """The control's precision at the same depth: for each user of `k_per_user` (user, k), the control's top k
    items that are candidates (no training interaction, docs/design.md 5), scored against `truth`."""
    if k_per_user.height == 0:
        return 0.0
    seen = interactions.filter(pl.col("split") == "train").select("user", "item")
    top = (control_topk.join(seen, on=["user", "item"], how="anti").join(k_per_user, on="user", how="inner")
           .sort(["user", "rank"]).filter(pl.int_range(pl.len()).over("user") < pl.col("k")))
    return hit_rate(top, truth)


def precision_check(augmented: pl.DataFrame, control_topk: pl.DataFrame, interactions: pl.DataFrame
                    ) -> dict[str, float | int]:
    """Engine vs control on the validation positives of the augmented users, at the same per-user depth."""
    pos = augmented.filter(pl.col("sign") == 1).select("user", "item")
    truth = validation_positives(interactions)
    k = pos.group_by("user").agg(pl.len().alias("k"))
    engine = hit_rate(pos, truth)
    control = control_hit_rate(control_topk, interactions, k, truth)
    return {"users": k.height, "positives": pos.height, "engine_precision": round(engine, 5),
            "control_precision": round(control, 5),
            "ratio": round(engine / control, 4) if control > 0 else (math.inf if engine > 0 else 0.0)}


def data_level_plan(dl: DataLevelConfig, gate: GateConfig, scores: pl.DataFrame | None,
                    paper_augmented: pl.DataFrame | None, interactions: pl.DataFrame,
                    control_topk: pl.DataFrame) -> tuple[list[Variant], str | None, dict]:
    """The data-level variants to train, or why none is (the precision pre-check), and the check's figures."""
    if scores is None or paper_augmented is None:
        return [], "the augment stage is not part of this run", {}
    if dl.reading == "paper":
        aug = paper_augmented
        variants = [Variant("data (paper reading)", aug, 1.0)]
    else:
        aug = select_calibrated(scores, interactions, dl, control_topk, paper_augmented)
        variants = [Variant(f"data w={w:g}", aug, w) for w in dl.weights if w > 0]
    check = precision_check(aug, control_topk, interactions)
    if not variants:
        return [], "data_level.weights has no strength above 0", check
    if gate.enabled and check["ratio"] < gate.min_precision_ratio:
        return [], (f"engine precision {check['engine_precision']:.2%} vs control {check['control_precision']:.2%} "
                    f"on validation positives of {check['users']} cold users (ratio {check['ratio']:.2f} < "
                    f"gate.min_precision_ratio {gate.min_precision_ratio:g}): not trained"), check
    return variants, None, check

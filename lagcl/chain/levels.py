"""The training stages' work: the control (docs/design.md 13) and the levels chosen against it (eq. 7-12), each
behind one call that trains through lagcl/chain/rule.py and writes the stage's model and tables into its folder.

`train_control` trains the backbone with no level on; `train_levels` tries the data level at each
`data_level.weights` strength with the rank level off, the rank level on top of what was kept
(rule.choose_levels), and writes the chosen model, the chain (`levels`) and every variant's metrics,
per-user values and epochs.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from lagcl.artifacts import StageDir
from lagcl.augment import cold_warm
from lagcl.config import Config
from lagcl.meta import Headline, metric_key
from lagcl.chain.data_level import data_level_plan
from lagcl.chain.fit import FitContext, Fitted, Variant, fit_variant, headline, topk_table
from lagcl.chain.rule import choose_levels
from lagcl.train_data import category_groups

log = logging.getLogger("lagcl.levels")

METRICS_SCHEMA = {"variant": pl.String, "split": pl.String, "protocol": pl.String, "segment": pl.String,
                  "metric": pl.String, "k": pl.Int32, "value": pl.Float64}


@dataclass(frozen=True)
class Interactions:
    """The prepare stage's tables a training stage reads."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    n_users: int

    @property
    def n_items(self) -> int:
        return self.items.height


@dataclass(frozen=True)
class Control:
    """The control stage's outputs the gcl stage measures every level against."""

    metrics: pl.DataFrame
    per_user: pl.DataFrame
    cf_topk: pl.DataFrame
    model: Path  # its model.pt: the gcl stage's own when no level is kept


def cold_warm_segments(interactions: pl.DataFrame, n_users: int, threshold: int) -> dict[str, torch.Tensor | None]:
    """Evaluation segments: all users, cold-start users (< `threshold` training positives, docs/design.md 4), warm."""
    parts = cold_warm(interactions, range(n_users), threshold)
    return {"all": None, **{name: torch.tensor(us, dtype=torch.long) for name, us in parts.items()}}


def node_groups(cfg: Config, data: Interactions, user_groups: pl.DataFrame | None,
                item_groups: pl.DataFrame | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Each user's and item's semantic group (eq. 5-6) for the rank level: the groups stage's, else (that stage
    off or `rank.groups_from: categories`) the stand-in genre groups."""
    n_users, n_items = data.n_users, data.n_items
    if cfg.rank.groups_from == "groups":
        if user_groups is not None and item_groups is not None:
            user_group = torch.full((n_users,), -1, dtype=torch.long)
            item_group = torch.full((n_items,), -1, dtype=torch.long)
            user_group[torch.from_numpy(user_groups["user"].to_numpy().astype("int64"))] = \
                torch.from_numpy(user_groups["group"].to_numpy().astype("int64"))
            item_group[torch.from_numpy(item_groups["item"].to_numpy().astype("int64"))] = \
                torch.from_numpy(item_groups["group"].to_numpy().astype("int64"))
            # an ungrouped node must not be "hard" for every other ungrouped node: give each its own group
            for g in (user_group, item_group):
                missing = g < 0
                g[missing] = int(g.max()) + 1 + torch.arange(int(missing.sum()))
            return user_group, item_group, "groups"
        log.warning("gcl: the groups stage has no output in this run; using the stand-in genre groups")
    user_group, item_group = category_groups(data.interactions, data.items, n_users, n_items)
    return user_group, item_group, "categories (stand-in: first genre)"


def fit_context(cfg: Config, data: Interactions, ckpt_root: Path,
                groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitContext:
    """What every variant of a training stage shares; `groups` only when the rank level is tried."""
    user_group, item_group = groups if groups is not None else (None, None)
    return FitContext(data.interactions, data.n_users, data.n_items, cfg.gcl, cfg.rank, cfg.data_level,
                      cfg.graph.backend, cfg.training_seed,
                      cold_warm_segments(data.interactions, data.n_users, cfg.augment.cold_threshold),
                      sorted(set(cfg.evaluate.topk) | {20}), user_group, item_group, ckpt_root)


def metrics_table(fitted: list[Fitted]) -> pl.DataFrame:
    return pl.DataFrame([{"variant": f.variant.name, **r} for f in fitted for r in f.rows], schema=METRICS_SCHEMA)


def epochs_table(fitted: list[Fitted]) -> pl.DataFrame:
    frames = [f.result.epochs.with_columns(pl.lit(f.variant.name).alias("variant"))
              for f in fitted if f.result is not None and f.result.epochs.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def per_user_table(fitted: list[Fitted]) -> pl.DataFrame:
    """Every variant's per-user Recall/NDCG@20 on both splits: what `make table2/table3` and the gate test."""
    return pl.concat([f.per_user.with_columns(pl.lit(f.variant.name).alias("variant"))
                      for f in fitted if f.per_user is not None])


def write_model(sd: StageDir, cfg: Config, f: Fitted) -> None:
    """model.pt and cf_topk (top `gcl.topk_out` per user, training positives masked) of a trained variant."""
    data = f.data
    torch.save({"backbone": cfg.gcl.backbone, "state_dict": f.result.best_state, "n_users": data.n_users,
                "n_items": data.n_items, "best_epoch": f.result.best_epoch, "gcl": cfg.gcl.model_dump(),
                "variant": f.variant.name, "rank": cfg.rank.model_dump() if f.variant.rank else None},
               sd.file_path("model.pt"))
    sd.write_table("cf_topk", topk_table(f, cfg.gcl.topk_out, cfg.gcl.eval_batch_users))


def fitted_control(control: Control, name: str = "control") -> Fitted:
    """A variant trained by an earlier stage (the control), from its metrics and per-user tables."""
    m = control.metrics.filter(pl.col("variant") == name)
    per_user = control.per_user.filter(pl.col("variant") == name).drop("variant")
    return Fitted(Variant(name), m.drop("variant").to_dicts(), per_user=per_user)


def mean_epoch(f: Fitted, col: str) -> float | None:
    if f.result is None or not f.result.epochs.height or col not in f.result.epochs.columns:
        return None
    return round(float(f.result.epochs[col].mean()), 4)


def train_control(sd: StageDir, cfg: Config, data: Interactions) -> dict:
    """Train the control (no level on) and write model.pt, cf_topk, metrics, per_user and epochs; returns the
    manifest meta (the control's headline numbers)."""
    ctx = fit_context(cfg, data, sd.file_path("checkpoints"))
    f = fit_variant(ctx, Variant("control"))
    write_model(sd, cfg, f)
    sd.write_table("metrics", metrics_table([f]))
    sd.write_table("per_user", per_user_table([f]))
    sd.write_table("epochs", epochs_table([f]))
    test = (f.value("test"), f.value("test", "ndcg"))
    return {**headline(f), **Headline(
                stage="control", backbone=cfg.gcl.backbone, test_recall=test[0], test_ndcg=test[1],
                valid_recall=f.valid, control_test_recall=test[0], control_test_ndcg=test[1], data_level=False,
                rank_level=False, rerank_level=None, variant="control", groups=None, levels=[]).as_meta(),
            "best_epoch": f.result.best_epoch, "epochs_run": f.result.epochs.height,
            "resumed_from_epoch": f.result.resumed_from,
            "train_seconds": round(f.result.train_seconds, 3), "data": f.data.info}


def train_levels(sd: StageDir, cfg: Config, data: Interactions, control: Control, rank_on: bool,
                 groups: tuple[pl.DataFrame | None, pl.DataFrame | None], scores: pl.DataFrame | None,
                 augmented: pl.DataFrame | None, groups_label: str | None = None) -> dict:
    """The chain control -> + data -> + rank on validation (lagcl/chain/rule.py): writes the chosen model (the
    control's when no level is kept) and the `levels`, `metrics`, `per_user` and `epochs` tables; returns the
    manifest meta. `groups`: the groups stage's (user_groups, item_groups), None where it is off; `scores`,
    `augmented`: the augment stage's, None where it is off. `groups_label`: what made the groups stage's groups
    (engine or files), recorded as the meta's `groups` when they are used."""
    node = node_groups(cfg, data, *groups) if rank_on else None
    groups_source = node[2] if node is not None else "none (rank level off)"
    if groups_source == "groups" and groups_label:
        groups_source = groups_label
    ctx = fit_context(cfg, data, sd.file_path("checkpoints"), node[:2] if node is not None else None)
    ctrl = fitted_control(control)
    variants, blocked, check = data_level_plan(cfg.data_level, cfg.gate, scores, augmented, data.interactions,
                                               control.cf_topk)
    if check:
        log.info("gcl data level: engine precision %.4f vs control %.4f on validation positives of %d cold "
                 "users (%d augmented positives, %s reading)", check["engine_precision"],
                 check["control_precision"], check["users"], check["positives"], cfg.data_level.reading)
    log.info("gcl: %s, %d users, %d items; levels to try: data %s, rank %s (groups: %s)", cfg.gcl.backbone,
             data.n_users, data.n_items, blocked or ", ".join(v.name for v in variants) or "none",
             "on" if rank_on else "off", groups_source)
    chosen, steps, trained = choose_levels(ctrl, lambda v: fit_variant(ctx, v), variants, blocked, rank_on, cfg.gate)
    for st in steps:
        log.info("gcl gate: %-6s %-28s %s: %s", st.level, st.variant, "KEPT" if st.kept else "off", st.reason)
    if chosen is ctrl:  # no level kept: this stage's model is the control's
        shutil.copyfile(control.model, sd.file_path("model.pt"))
        sd.write_table("cf_topk", control.cf_topk)
    else:
        write_model(sd, cfg, chosen)
    sd.write_table("levels", pl.DataFrame([st.as_row() for st in steps]))
    sd.write_table("metrics", metrics_table([ctrl, *trained]))
    sd.write_table("per_user", per_user_table([ctrl, *trained]))
    sd.write_table("epochs", epochs_table(trained))
    kept = {st.level for st in steps if st.kept}
    ranked = next((f for f in trained if f.variant.rank), None)
    # the rank step names the groups and the reading it trained with: the chain shows which ran
    levels = [{**st.as_row(), **({"groups": groups_source, "reading": cfg.rank.reading}
                                 if st.level == "rank" and st.trained else {})} for st in steps]
    return {
        **Headline(stage="gcl", backbone=cfg.gcl.backbone, test_recall=chosen.value("test"),
                   test_ndcg=chosen.value("test", "ndcg"), valid_recall=chosen.valid,
                   control_test_recall=ctrl.value("test"), control_test_ndcg=ctrl.value("test", "ndcg"),
                   data_level="data" in kept, rank_level="rank" in kept, rerank_level=None,
                   variant=chosen.variant.name, groups=groups_source, levels=levels).as_meta(),
        "rank_tried": rank_on,
        "data_tried": blocked is None and bool(variants), "data_check": check,
        "data": chosen.data.info if chosen.data is not None else {},
        "gate": cfg.gate.model_dump(),
        "best_epoch": chosen.result.best_epoch if chosen.result else None,
        metric_key("valid", "ndcg"): chosen.value("valid", "ndcg"), metric_key("valid", of="control"): ctrl.valid,
        "train_seconds": round(sum(f.result.train_seconds for f in trained if f.result), 3),
        # of the rank-level variant, kept or not: how many LABPR negatives were hard and what w_h did
        "hard_negative_share": mean_epoch(ranked, "hard") if ranked else None,
        "hard_loss_share": mean_epoch(ranked, "hard_loss") if ranked else None,
    }

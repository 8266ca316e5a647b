"""The GCL trainer: Adam over BPR/LABPR + InfoNCE/LA-InfoNCE (eq. 9-12), validation on
`gcl.valid_metric` (Recall@20 by default) each epoch, early stopping, and a checkpoint each epoch that
resumes bit-for-bit (model, optimiser, RNG).

`Trainer` is RecBole's trainer in its steps: `_train_epoch`, `_valid_epoch`, the early-stopping decision
(`TrainState.record`, `TrainState.stopped`), `_save_checkpoint`, `resume_checkpoint` and `fit`; what one
epoch hands to the next is a `TrainState`, and `last.pt` is that state (`TrainState.checkpoint` and
`TrainState.restore` are the one definition of its contents).

`rank=None` trains the backbone with its own standard losses (Table 2 "base"); a RankConfig switches
on the rank level: LABPR with item groups, LA-InfoNCE with user/item groups, dislike-aware sampling.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import polars as pl
import torch
from tqdm.auto import tqdm

from lagcl.config import GCLConfig, RankConfig
from lagcl.device import resolve_device
from lagcl.losses import (bpr_loss, group_aware_info_nce, info_nce, l2_reg, la_info_nce, labpr_loss, lightgcl_info_nce,
                          official_bpr, official_reg, total_loss)
from lagcl.measure import validate
from lagcl.models import Backbone
from lagcl.train_data import TrainData

CKPT_VERSION = 1
log = logging.getLogger("lagcl.train")


@dataclass
class TrainResult:
    best_state: dict
    epochs: pl.DataFrame
    best_epoch: int
    train_seconds: float
    resumed_from: int


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def batch_losses(model: Backbone, data: TrainData, users: torch.Tensor, items: torch.Tensor, negs: torch.Tensor,
                 gcl: GCLConfig, rank: RankConfig | None, generator: torch.Generator,
                 weight: torch.Tensor | None = None, neg_users: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """Eq. 12 for one batch of (user, positive, negative) triplets. `weight`: per-triplet weight (augmented
    positives); `neg_users`: one negative user per triplet for the item -> user half of LABPR
    (`rank.item_side` > 0). Also returns `hard` (share of hard triplets) and `hard_loss` (share of the
    recommendation loss that the hard triplets carry: what w_h did)."""
    enc = model.encode(generator)
    u, i, j = enc.user[users], enc.item[items], enc.item[negs]
    pos, neg = (u * i).sum(-1), (u * j).sum(-1)
    zero = pos.new_zeros(())
    hard_share = hard_loss = zero
    if rank is not None and data.item_group is not None:
        hard = data.item_group[items] == data.item_group[negs]
        rec = labpr_loss(pos, neg, hard, rank.w_h, weight)
        with torch.no_grad():
            terms = torch.nn.functional.softplus(neg - pos) * torch.where(hard, rank.w_h, 1.0)
            hard_share = hard.float().mean()
            hard_loss = (terms * hard).sum() / terms.sum().clamp(min=1e-12)
        if neg_users is not None and rank.item_side > 0 and data.user_group is not None:
            # eq. 9 from the item's side ("similar definitions apply"): user u should outrank a user v
            # for item i, v hard when it shares u's user group
            neg_u = (enc.user[neg_users] * i).sum(-1)
            rec = rec + rank.item_side * labpr_loss(pos, neg_u, data.user_group[users] == data.user_group[neg_users],
                                                    rank.w_h, weight)
    else:
        rec = bpr_loss(pos, neg, weight)
    cl_u = cl_i = zero
    lambda_cl = 0.0
    if enc.views is not None:
        (u1, i1), (u2, i2) = enc.views
        uu, ii = torch.unique(users), torch.unique(items)
        if rank is not None:
            lambda_cl = rank.lambda_cl
            t = dict(tau_p=rank.tau_p, tau_e=rank.tau_e_ratio * rank.tau_p, tau_h=rank.tau_h_ratio * rank.tau_p,
                     w_h=rank.w_h)
            cl_u = la_info_nce(u1[uu], u2[uu], data.user_group[uu], **t)
            cl_i = la_info_nce(i1[ii], i2[ii], data.item_group[ii], **t)
        elif model.reference_cl == "lightgcl" and gcl.cl_loss == "reference":
            lambda_cl = gcl.lambda_cl
            cl_u = lightgcl_info_nce(u2, u1, uu, gcl.cl_temperature)  # views = (GCN, SVD)
            cl_i = lightgcl_info_nce(i2, i1, ii, gcl.cl_temperature)
        else:
            lambda_cl = gcl.lambda_cl
            cl_u = info_nce(u1[uu], u2[uu], gcl.cl_temperature)
            cl_i = info_nce(i1[ii], i2[ii], gcl.cl_temperature)
    reg = l2_reg(model.user_emb[users], model.item_emb[items], model.item_emb[negs])
    loss = total_loss(rec, cl_u, cl_i, reg, lambda_cl, gcl.lambda_reg)
    return {"loss": loss, "rec": rec, "cl": cl_u + cl_i, "reg": reg, "hard": hard_share, "hard_loss": hard_loss}


def official_batch_losses(model: Backbone, data: TrainData, users: torch.Tensor, items: torch.Tensor,
                          easy: torch.Tensor, hard: torch.Tensor, from_group: torch.Tensor, gcl: GCLConfig,
                          rank: RankConfig, generator: torch.Generator, weight: torch.Tensor | None = None
                          ) -> dict[str, torch.Tensor]:
    """The rank level as the authors' released code computes it (`rank.reading: official`, docs/design.md 15),
    for one batch of (user, positive, easy negative, hard negative): bpr(easy) + w_h bpr(hard) in their BPR
    form, lambda_cl times their group-aware InfoNCE over the batch's unique users and items (contrastive
    backbones only), and lambda_reg times their norm regulariser on the scored user and positive embeddings.
    `hard` (the share of hard negatives that came from the positive's group) and `hard_loss` (the share of
    the recommendation loss the hard term carries) as in `batch_losses`."""
    enc = model.encode(generator)
    u, i = enc.user[users], enc.item[items]
    pos = (u * i).sum(-1)
    easy_loss = official_bpr(pos, (u * enc.item[easy]).sum(-1), weight)
    hard_term = rank.w_h * official_bpr(pos, (u * enc.item[hard]).sum(-1), weight)
    rec = easy_loss + hard_term
    cl_u = cl_i = pos.new_zeros(())
    if enc.views is not None:
        (u1, i1), (u2, i2) = enc.views
        uu, ii = torch.unique(users), torch.unique(items)
        t = dict(tau_p=rank.tau_p, tau_e=rank.tau_e_ratio * rank.tau_p, tau_h=rank.tau_h_ratio * rank.tau_p,
                 w_h=rank.w_h)
        cl_u = group_aware_info_nce(u1[uu], u2[uu], data.user_group[uu], **t)
        cl_i = group_aware_info_nce(i1[ii], i2[ii], data.item_group[ii], **t)
    reg = official_reg(u, i)
    loss = total_loss(rec, cl_u, cl_i, reg, rank.lambda_cl if enc.views is not None else 0.0, gcl.lambda_reg)
    with torch.no_grad():
        hard_loss = hard_term / rec.clamp(min=1e-12)
    return {"loss": loss, "rec": rec, "cl": cl_u + cl_i, "reg": reg, "hard": from_group.float().mean(),
            "hard_loss": hard_loss}


LOSS_PARTS = ("loss", "rec", "cl", "reg", "hard", "hard_loss")


@dataclass
class TrainState:
    """What one epoch hands to the next, and what `last.pt` holds: the live model, optimiser and sampling
    generator (their states are checkpointed) and the run's progress (checkpointed as is)."""

    model: Backbone
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    best_state: dict               # the weights of the best epoch so far
    epoch: int = 0                 # epochs done
    best: float = -1.0             # the best epoch's validation value of gcl.valid_metric
    best_epoch: int = -1
    bad: int = 0                   # epochs since the best one
    rows: list[dict] = field(default_factory=list)   # one per epoch: the `epochs` table
    train_seconds: float = 0.0     # training time of the epochs done, validation excluded

    # the fields a checkpoint holds as they are (model, optimiser and generator go in as their states)
    PROGRESS: ClassVar[tuple[str, ...]] = ("epoch", "best", "best_epoch", "bad", "rows", "train_seconds",
                                           "best_state")

    def checkpoint(self) -> dict:
        return {"version": CKPT_VERSION, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), **{name: getattr(self, name) for name in self.PROGRESS}}

    def restore(self, ck: dict) -> None:
        if ck.get("version") != CKPT_VERSION:
            raise ValueError(f"checkpoint version {ck.get('version')!r}, this trainer reads {CKPT_VERSION}: "
                             "delete it to train from scratch")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.generator.set_state(ck["generator"])
        for name in self.PROGRESS:
            setattr(self, name, ck[name])

    def record(self, value: float) -> bool:
        """Count one more epoch with validation value `value`; True when it is a new best (its weights
        are kept)."""
        self.epoch += 1
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, self.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
            return True
        self.bad += 1
        return False

    def stopped(self, gcl: GCLConfig) -> bool:
        """Early stopping: `gcl.patience` epochs without a better validation value, and not before
        `gcl.min_epochs` (contrastive backbones can sit in an early validation trough)."""
        return self.bad >= gcl.patience and self.epoch >= gcl.min_epochs


class Trainer:
    """Trains one backbone on one TrainData; `fit` runs the epochs, one step each method."""

    def __init__(self, model: Backbone, data: TrainData, gcl: GCLConfig, rank: RankConfig | None, seed: int,
                 device: str = "cpu"):
        if rank is not None and (data.item_group is None or ((model.contrastive or rank.item_side > 0)
                                                              and data.user_group is None)):
            raise ValueError("the rank level needs item groups (and user groups for contrastive backbones and "
                             "the item-side LABPR term)")
        self.model, self.data, self.gcl, self.rank, self.device = model, data, gcl, rank, device
        self.official = rank is not None and rank.reading == "official"
        generator = torch.Generator().manual_seed(seed)
        # the groups index device tensors in the losses; the sampler and the evaluation sets stay on the CPU
        self.on_device = dataclasses.replace(data, user_group=self._on(data.user_group),
                                             item_group=self._on(data.item_group))
        optimizer = torch.optim.Adam(model.parameters(), lr=gcl.lr)
        self.state = TrainState(model, optimizer, generator, copy.deepcopy(model.state_dict()))
        k = gcl.valid_key[1]
        # 20 always: the `epochs` table keeps its valid_recall@20 / valid_ndcg@20 columns whatever the metric
        self.valid_ks = (20,) if k == 20 else tuple(sorted({20, k}))
        self.valid_column = f"valid_{gcl.valid_metric}"

    def _on(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(self.device) if t is not None else None

    def _train_epoch(self) -> dict[str, float]:
        """One pass over the BPR positives in seeded random batches; the mean of each loss part."""
        data, state, gcl, on = self.data, self.state, self.gcl, self._on
        item_side = self.rank is not None and self.rank.item_side > 0
        self.model.new_epoch(state.generator)
        n_pairs = data.pair_users.numel()
        perm = torch.randperm(n_pairs, generator=state.generator)
        sums = dict.fromkeys(LOSS_PARTS, 0.0)
        n_batches = 0
        for b in range(0, n_pairs, gcl.batch_size):
            idx = perm[b:b + gcl.batch_size]
            users, items = data.pair_users[idx], data.pair_items[idx]
            weight = data.pair_weight[idx] if data.pair_weight is not None else None
            if self.official:
                negs, hard_negs, from_group = data.sampler.sample_easy_hard(users, items, state.generator)
                parts = official_batch_losses(self.model, self.on_device, on(users), on(items), on(negs),
                                              on(hard_negs), on(from_group), gcl, self.rank, state.generator, on(weight))
            else:
                negs = data.sampler.sample(users, state.generator, items)
                neg_users = data.sampler.sample_users(items, state.generator) if item_side else None
                parts = batch_losses(self.model, self.on_device, on(users), on(items), on(negs), gcl, self.rank,
                                     state.generator, on(weight), on(neg_users))
            state.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            state.optimizer.step()
            for k in sums:
                sums[k] += float(parts[k].detach())
            n_batches += 1
        return {k: v / max(n_batches, 1) for k, v in sums.items()}

    def _valid_epoch(self) -> dict[tuple[str, int], float]:
        """All-rank validation at 20 (the `epochs` table's columns) and at gcl.valid_metric's k."""
        return validate(self.model, self.data, ks=self.valid_ks, batch_size=self.gcl.eval_batch_users)

    def _save_checkpoint(self, path: Path) -> None:
        _save_atomic(self.state.checkpoint(), path)

    def resume_checkpoint(self, path: Path) -> None:
        self.state.restore(torch.load(path, weights_only=False, map_location="cpu"))

    def fit(self, ckpt_dir: Path | None = None, progress: bool = True, stop_after: int | None = None
            ) -> TrainResult:
        """Epochs until `gcl.epochs` or early stopping; with `ckpt_dir`, resumes from its `last.pt` and
        writes it after every epoch. `stop_after=k` returns after epoch k (as if killed there)."""
        state, gcl = self.state, self.gcl
        last = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
        if last is not None and last.is_file():
            self.resume_checkpoint(last)
            log.info("gcl %s: resumed at epoch %d of %d from %s", type(self.model).__name__, state.epoch,
                     gcl.epochs, last)
        resumed_from = state.epoch
        bar = tqdm(total=gcl.epochs, initial=state.epoch, disable=not progress or state.stopped(gcl),
                   desc=f"gcl {type(self.model).__name__}", dynamic_ncols=True)
        self.model.train()
        while state.epoch < gcl.epochs and not state.stopped(gcl):
            t0 = time.perf_counter()
            losses = self._train_epoch()
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            m = self._valid_epoch()
            eval_s = time.perf_counter() - t1
            state.train_seconds += train_s
            improved = state.record(m[self.gcl.valid_key])
            valid = {"valid_recall@20": m[("recall", 20)], "valid_ndcg@20": m[("ndcg", 20)]}
            valid.setdefault(self.valid_column, m[self.gcl.valid_key])
            state.rows.append({"epoch": state.epoch, **losses, **valid, "train_seconds": train_s,
                               "eval_seconds": eval_s, "best": improved})
            bar.update()
            bar.set_postfix(loss=f"{losses['loss']:.4f}", rec=f"{losses['rec']:.4f}", cl=f"{losses['cl']:.3f}",
                            R20=f"{valid['valid_recall@20']:.4f}", N20=f"{valid['valid_ndcg@20']:.4f}",
                            best=state.best_epoch)
            if last is not None:
                self._save_checkpoint(last)
            if stop_after is not None and state.epoch >= stop_after:
                break
        bar.close()
        self.model.load_state_dict(state.best_state)
        best_state = {k: v.cpu() for k, v in state.best_state.items()}   # model.pt loads anywhere
        epochs = pl.DataFrame(state.rows, schema_overrides={"epoch": pl.Int32}) if state.rows else pl.DataFrame()
        return TrainResult(best_state, epochs, state.best_epoch, state.train_seconds, resumed_from)


def train(model: Backbone, data: TrainData, gcl: GCLConfig, rank: RankConfig | None, seed: int,
          ckpt_dir: Path | None = None, progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train until `gcl.epochs` or `gcl.patience` epochs without a better validation `gcl.valid_metric`.

    With `ckpt_dir`, `last.pt` is written after every epoch and a rerun resumes from it, giving the
    same result as an uninterrupted run. `stop_after=k` returns after epoch k (as if killed there).

    `gcl.device`: the model, its graph, the losses and the all-rank validation run there (the model stays
    there afterwards); negatives, edge dropout and noise are drawn on the CPU with the seeded generator, so
    every device sees the same draws and a CPU run is what it was before the setting existed."""
    threads = torch.get_num_threads()
    if gcl.num_threads:
        torch.set_num_threads(gcl.num_threads)
    try:
        device = resolve_device(gcl.device)
        model.to(device)
        model.graph = model.graph.to(device)
        return Trainer(model, data, gcl, rank, seed, device).fit(ckpt_dir, progress, stop_after)
    finally:
        torch.set_num_threads(threads)

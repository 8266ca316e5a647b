"""The validation gate (docs/design.md 13): every level is measured against the control and kept only when it
pays on validation; test is only reported.

The chain is control -> + data -> + rank. The control is the same backbone, seed and data with no level
on (the `control` stage). The data level is tried at each strength of `data_level.weights` (with the rank
level off) after a pre-check that its augmented positives are at least as precise as the control's own
top-k on the validation positives of the same users; the best strength is kept only when its validation
Recall@20 beats the control's by more than `gate.min_gain` (relative) *and* the gain is above the noise: the
sign-flip permutation test over validation users (lagcl/stats.py) gives p < `gate.max_p`. The rank level is
then trained on top of what was kept and kept by the same rule. Every step also carries its test change
against the control with its interval and p-value (reported only). With `gate.enabled: false` every configured level is kept
whatever validation says (the paper's protocol; the measurements are still reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl
import torch

from lagcl.config import DataLevelConfig, GateConfig, GCLConfig, RankConfig
from lagcl.models import Backbone, Graph, build_model
from lagcl.stats import Paired, format_p, mark, paired_users
from lagcl.measure import metric_rows, per_user_table
from lagcl.train import TrainResult, train
from lagcl.train_data import TrainData, build_train_data


@dataclass(eq=False)
class Variant:
    """One model to train: the backbone with the data level at `aug_weight` (0 = off) and/or the rank level."""

    name: str
    augmented: pl.DataFrame | None = None
    aug_weight: float = 0.0
    rank: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.name.lower()).strip("-")

    @property
    def data_on(self) -> bool:
        return self.augmented is not None and self.aug_weight > 0


@dataclass(eq=False)
class Fitted:
    """A trained variant: its metric rows (split, protocol, segment, metric, k, value) and, when trained
    in this process, the model and its training record."""

    variant: Variant
    rows: list[dict]
    model: Backbone | None = None
    data: TrainData | None = None
    result: TrainResult | None = None
    per_user: pl.DataFrame | None = None  # (split, user, recall, ndcg) at 20: what the paired tests compare

    def value(self, split: str = "valid", metric: str = "recall", k: int = 20, segment: str = "all",
              protocol: str = "all") -> float:
        for r in self.rows:
            if (r["split"], r["metric"], r["k"], r["segment"], r["protocol"]) == (split, metric, k, segment, protocol):
                return float(r["value"])
        raise KeyError(f"{self.variant.name}: no {split} {metric}@{k} for segment {segment}, protocol {protocol}")

    @property
    def valid(self) -> float:
        return self.value("valid")


@dataclass
class Step:
    """One line of the chain: what was tried for a level, whether it was kept, and why."""

    level: str
    variant: str
    trained: bool
    kept: bool
    reason: str
    metrics: dict = field(default_factory=dict)  # "valid_recall@20" ... of the variant, when trained

    def as_row(self) -> dict:
        return {"level": self.level, "variant": self.variant, "trained": self.trained, "kept": self.kept,
                "reason": self.reason, "valid_scope": self.metrics.get("valid_scope", "all users"),
                **{k: self.metrics.get(k) for k in METRIC_KEYS + TEST_KEYS}}


METRIC_KEYS = [f"{s}_{m}@20{seg}" for s in ("valid", "test") for m in ("recall", "ndcg")
               for seg in ("", "_cold", "_warm")]
# the paired tests of a step (lagcl/stats.py): validation Recall@20 against the step before it (what the gate
# decided on) and test Recall@20 / NDCG@20 against the control (reported only): difference, 95% interval, p
TEST_KEYS = [f"{s}_{m}@20_{q}" for s, m in (("valid", "recall"), ("test", "recall"), ("test", "ndcg"))
             for q in ("diff", "lo", "hi", "p")]


def headline(f: Fitted) -> dict[str, float]:
    out = {}
    for s in ("valid", "test"):
        for m in ("recall", "ndcg"):
            for seg in ("all", "cold", "warm"):
                try:
                    out[f"{s}_{m}@20{'' if seg == 'all' else '_' + seg}"] = f.value(s, m, 20, seg)
                except KeyError:
                    pass
    return out


def paired(f: Fitted, base: Fitted, split: str = "valid", metric: str = "recall", resamples: int = 10000,
           seed: int = 0) -> Paired | None:
    """The per-user paired test of `f` against `base` on one split (None when either has no per-user table,
    e.g. a control from before per-user tables were written). Users without truth items are in neither."""
    if f.per_user is None or base.per_user is None:
        return None
    a = f.per_user.filter(pl.col("split") == split).select("user", pl.col(metric).alias("a"))
    b = base.per_user.filter(pl.col("split") == split).select("user", pl.col(metric).alias("b"))
    both = a.join(b, on="user", how="inner").sort("user")
    return paired_users(both["a"].to_numpy(), both["b"].to_numpy(), resamples, seed)


def paired_figures(f: Fitted, before: Fitted, control: Fitted, gate: GateConfig) -> dict:
    """TEST_KEYS of a step: validation vs the step before, test vs the control."""
    out = {}
    for key, base, split, metric in (("valid_recall@20", before, "valid", "recall"),
                                     ("test_recall@20", control, "test", "recall"),
                                     ("test_ndcg@20", control, "test", "ndcg")):
        t = paired(f, base, split, metric, gate.resamples) if f is not base else None
        if t is not None:
            out.update({f"{key}_diff": t.diff, f"{key}_lo": t.lo, f"{key}_hi": t.hi, f"{key}_p": t.p})
    return out


def above_noise(t: Paired | None, gate: GateConfig) -> bool:
    """The noise rule: a positive mean paired difference whose p-value is below `gate.max_p` (1 turns it off)."""
    if gate.max_p >= 1.0:
        return True
    return t is not None and t.diff > 0 and t.p < gate.max_p


def gain(candidate: float, base: float) -> float:
    return (candidate - base) / base if base else float("inf") if candidate > 0 else 0.0


def beats(candidate: float, base: float, min_gain: float) -> bool:
    return candidate > base * (1.0 + min_gain)


@dataclass
class FitContext:
    """What every variant of one gcl stage shares: data, configuration, groups, evaluation segments."""

    interactions: pl.DataFrame
    n_users: int
    n_items: int
    gcl: GCLConfig
    rank: RankConfig
    data_level: DataLevelConfig
    graph_backend: str
    seed: int
    segments: dict[str, torch.Tensor | None]
    ks: list[int]
    user_group: torch.Tensor | None = None
    item_group: torch.Tensor | None = None
    ckpt_root: Path | None = None
    progress: bool = True


def fit_variant(ctx: FitContext, v: Variant) -> Fitted:
    """Train one variant (resumable: its checkpoints live under ckpt_root/<slug>) and measure it."""
    rank = ctx.rank if v.rank else None
    dislike = max(ctx.rank.dislike_sample_prob if v.rank else 0.0, ctx.data_level.dislike_prob if v.data_on else 0.0)
    data = build_train_data(ctx.interactions, ctx.n_users, ctx.n_items, v.augmented if v.data_on else None,
                            ctx.user_group, ctx.item_group, dislike_prob=dislike,
                            aug_weight=v.aug_weight if v.data_on else 0.0, channel=ctx.data_level.channel,
                            hard_share=ctx.rank.hard_neg_share if v.rank else 0.0)
    graph = Graph(data.edge_users, data.edge_items, ctx.n_users, ctx.n_items, ctx.graph_backend,
                  weights=data.edge_weight)
    model = build_model(ctx.gcl, graph, ctx.seed)
    ckpt = ctx.ckpt_root / v.slug if ctx.ckpt_root is not None else None
    result = train(model, data, ctx.gcl, rank, ctx.seed, ckpt_dir=ckpt, progress=ctx.progress)
    rows = metric_rows(model, data, ctx.ks, ctx.segments, ctx.gcl.eval_batch_users)
    return Fitted(v, rows, model, data, result, per_user_table(model, data, 20, ctx.gcl.eval_batch_users))


def topk_table(f: Fitted, k: int, batch_size: int = 1024) -> pl.DataFrame:
    """(user, item, score, rank): each user's top k items by the trained model, training positives masked."""
    from lagcl.evaluate import rank_topk

    model, data = f.model, f.data
    model.eval()
    with torch.no_grad():
        cache = model.embeddings()
    users = torch.arange(data.n_users)
    top_items, top_scores = rank_topk(lambda u: model.score(u, cache), users, k, data.train_pos, batch_size)
    k = top_items.shape[1]
    return pl.DataFrame({
        "user": users.repeat_interleave(k).numpy().astype("int32"),
        "item": top_items.flatten().numpy().astype("int32"),
        "score": top_scores.flatten().double().numpy(),
        "rank": torch.arange(1, k + 1, dtype=torch.int32).repeat(data.n_users).numpy(),
    })


def choose_levels(control: Fitted, fit: Callable[[Variant], Fitted], data_variants: list[Variant],
                  data_blocked: str | None, rank_on: bool, gate: GateConfig) -> tuple[Fitted, list[Step], list[Fitted]]:
    """Walk the chain control -> + data -> + rank; returns the chosen model, the steps and every trained
    variant. `data_blocked` is why the data level was not trained (None: train `data_variants`)."""
    steps = [Step("control", control.variant.name, True, True, "same backbone, seed and data with no level on",
                  headline(control))]
    trained: list[Fitted] = []
    best = control

    def judge(level: str, f: Fitted, before: Fitted) -> Step:
        figures = paired_figures(f, before, control, gate)
        t = paired(f, before, "valid", "recall", gate.resamples)
        ok = beats(f.valid, before.valid, gate.min_gain) and above_noise(t, gate)
        verdict = (f"validation Recall@20 {f.valid:.4f} vs {before.variant.name} {before.valid:.4f} "
                   f"({gain(f.valid, before.valid):+.2%}"
                   + (f", p={format_p(t.p)}{mark(t.p)}" if t is not None else ", no per-user test") + ")")
        if ok or not gate.enabled:
            return Step(level, f.variant.name, True, True, verdict + ("" if ok else
                        "; kept because gate.enabled is false"), {**headline(f), **figures})
        needs = f"> {gate.min_gain:+.2%}" + (f" with p < {gate.max_p:g}" if gate.max_p < 1.0 else "")
        return Step(level, f.variant.name, True, False, verdict + f": turned down (needs {needs})",
                    {**headline(f), **figures})

    if data_blocked is not None:
        steps.append(Step("data", "off", False, False, data_blocked))
    elif data_variants:
        tried = [fit(v) for v in data_variants]
        trained += tried
        top = max(tried, key=lambda f: f.valid)  # first of equals: the list's order breaks ties
        for f in tried:
            if f is not top:
                steps.append(Step("data", f.variant.name, True, False,
                                  f"validation Recall@20 {f.valid:.4f} < {top.valid:.4f} of {top.variant.name}",
                                  {**headline(f), **paired_figures(f, control, control, gate)}))
        step = judge("data", top, control)
        steps.append(step)
        if step.kept:
            best = top
    if rank_on:
        base = best.variant
        v = Variant(f"{base.name} + rank" if base.data_on else "rank", base.augmented, base.aug_weight, rank=True)
        f = fit(v)
        trained.append(f)
        step = judge("rank", f, best)
        steps.append(step)
        if step.kept:
            best = f
    return best, steps, trained


def data_level_plan(dl: DataLevelConfig, gate: GateConfig, scores: pl.DataFrame | None,
                    paper_augmented: pl.DataFrame | None, interactions: pl.DataFrame,
                    control_topk: pl.DataFrame) -> tuple[list[Variant], str | None, dict]:
    """The data-level variants to train, or why none is (the precision pre-check), and the check's figures."""
    from lagcl.data_level import precision_check, select_calibrated

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


# how the chain names the rank level's objective (`rank.reading`)
READINGS = {"paper": "paper (eq. 7-12 as docs/design.md reads them)",
            "official": "official (the authors' released code's objective, docs/design.md 15)"}


def format_chain(levels: list[dict], final: dict | None = None) -> list[str]:
    """The chain as text lines (terminal summary, report, compare): each level's validation and test
    Recall/NDCG@20 with the change against the control, cold/warm test Recall@20, the paired test of the test
    Recall@20 change (95% interval over users, p-value, the paper's marks), kept or not and why."""
    control = next((r for r in levels if r["level"] == "control"), None)

    def cell(r: dict, key: str) -> str:
        v = r.get(key)
        if v is None:
            return "-"
        if key.startswith("valid") and r.get("valid_scope", "all users") != "all users":
            return f"{v:.4f} (h)"  # another set of users (the reranker's held-out ones): no change to show
        base = control.get(key) if control is not None and r is not control else None
        return f"{v:.4f}" + (f" ({gain(v, base):+.1%}){mark(r.get(key + '_p') or float('nan'))}" if base else "")

    def interval(r: dict) -> str:
        if r.get("test_recall@20_p") is None:
            return "-"
        return (f"{r['test_recall@20_diff']:+.4f} [{r['test_recall@20_lo']:+.4f}, {r['test_recall@20_hi']:+.4f}] "
                f"p={format_p(r['test_recall@20_p'])}")

    lines = [f"  {'level':<8} {'variant':<26} {'kept':<4} {'valid R@20':>19} {'test R@20':>19} {'test N@20':>19} "
             f"{'cold test R@20':>19} {'warm test R@20':>19}  {'test R@20 - control [95% CI] p':<36}  why"]
    for r in levels:
        name = r["level"] if r["level"] == "control" else "+ " + r["level"]
        lines.append(f"  {name:<8} {str(r['variant'])[:26]:<26} {'yes' if r['kept'] else 'no':<4} "
                     f"{cell(r, 'valid_recall@20'):>19} {cell(r, 'test_recall@20'):>19} {cell(r, 'test_ndcg@20'):>19} "
                     f"{cell(r, 'test_recall@20_cold'):>19} {cell(r, 'test_recall@20_warm'):>19}  "
                     f"{interval(r):<36}  {r['reason']}")
    for r in levels:
        if r.get("groups"):
            lines.append(f"  + {r['level']} groups: {r['groups']}")
        if r.get("reading"):
            lines.append(f"  + {r['level']} reading: {READINGS.get(r['reading'], r['reading'])}")
    if any(r.get("valid_scope", "all users") != "all users" for r in levels):
        lines.append("  (h): validation over the reranker's held-out users only, not comparable with the rows above")
    if any(r.get("test_recall@20_p") is not None for r in levels):
        lines.append("  * p < 0.05, ** p < 0.01: paired sign-flip permutation test over users against the control "
                     "(one seed; lagcl/stats.py)")
    if final is not None:
        lines.append(f"  {'final':<8} {str(final.get('variant'))[:26]:<26} {'':<4} {cell(final, 'valid_recall@20'):>19} "
                     f"{cell(final, 'test_recall@20'):>19} {cell(final, 'test_ndcg@20'):>19} "
                     f"{cell(final, 'test_recall@20_cold'):>19} {cell(final, 'test_recall@20_warm'):>19}  "
                     f"{interval(final):<36}")
    return lines

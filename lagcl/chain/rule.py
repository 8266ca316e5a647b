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

from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from lagcl.chain.fit import Fitted, Variant, headline
from lagcl.config import GateConfig
from lagcl.meta import metric_key
from lagcl.stats import Paired, format_p, mark, paired_users


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


METRIC_KEYS = [metric_key(s, m, segment=seg) for s in ("valid", "test") for m in ("recall", "ndcg")
               for seg in (None, "cold", "warm")]
# the paired tests of a step (lagcl/stats.py): validation Recall@20 against the step before it (what the gate
# decided on) and test Recall@20 / NDCG@20 against the control (reported only): difference, 95% interval, p
TEST_KEYS = [metric_key(s, m, stat=q) for s, m in (("valid", "recall"), ("test", "recall"), ("test", "ndcg"))
             for q in ("diff", "lo", "hi", "p")]


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
    for base, split, metric in ((before, "valid", "recall"), (control, "test", "recall"), (control, "test", "ndcg")):
        t = paired(f, base, split, metric, gate.resamples) if f is not base else None
        if t is not None:
            out.update({metric_key(split, metric, stat=q): v for q, v in
                        (("diff", t.diff), ("lo", t.lo), ("hi", t.hi), ("p", t.p))})
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


def verdict(gate: GateConfig, cand: float, base: float, t: Paired | None, compared: str, base_name: str,
            refused: str) -> tuple[bool, str]:
    """The gate's rule for one step of the chain, the same for the data, rank and rerank steps: `cand` is kept over
    `base` when it beats it by more than `gate.min_gain` (relative) and the paired test `t` puts the gain above
    the noise, or whatever validation says with `gate.enabled: false`; returns (kept, the reason the chain
    shows). `compared`: what the two values are ("validation Recall@20"), `base_name`: what `base` is,
    `refused`: how the reason says the step was turned down."""
    ok = beats(cand, base, gate.min_gain) and above_noise(t, gate)
    reason = (f"{compared} {cand:.4f} vs {base_name} {base:.4f} ({gain(cand, base):+.2%}"
              + (f", p={format_p(t.p)}{mark(t.p)}" if t is not None else ", no per-user test") + ")")
    if ok or not gate.enabled:
        return True, reason + ("" if ok else "; kept because gate.enabled is false")
    needs = f"> {gate.min_gain:+.2%}" + (f" with p < {gate.max_p:g}" if gate.max_p < 1.0 else "")
    return False, reason + f": {refused} (needs {needs})"


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
        kept, reason = verdict(gate, f.valid, before.valid, t, "validation Recall@20", before.variant.name,
                               "turned down")
        return Step(level, f.variant.name, True, kept, reason, {**headline(f), **figures})

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

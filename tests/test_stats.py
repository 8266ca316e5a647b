"""Paired comparisons (lagcl/stats.py) and the gate's noise rule: a variant equal to its control is not
significant, a planted per-user gain is, and the interval covers the planted difference."""

import math

import numpy as np
import polars as pl

from lagcl.config import GateConfig
from lagcl.chain.fit import Fitted, Variant
from lagcl.chain.rule import choose_levels
from lagcl.chain.text import format_chain
from lagcl.stats import combined, mark, paired_seeds, paired_users, spread


def _recall_like(rng, n):
    """Per-user Recall@20-like values: bounded, a third of users at 0."""
    return np.where(rng.random(n) < 0.33, 0.0, rng.beta(2, 5, n))


def test_a_variant_equal_to_its_control_in_distribution_gets_a_large_p_value():
    rng = np.random.default_rng(1)
    control = _recall_like(rng, 900)
    variant = np.clip(control + rng.normal(0, 0.1, 900), 0, 1)  # noise around the same rankings' quality
    variant = control + (variant - control) - (variant - control).mean()  # exactly the same mean
    t = paired_users(variant, control, resamples=4000, seed=0)
    assert t.p > 0.2
    assert t.lo < 0 < t.hi


def test_a_planted_per_user_gain_gets_a_small_p_value_and_an_interval_that_covers_it():
    rng = np.random.default_rng(2)
    control = _recall_like(rng, 900)
    planted = 0.03
    variant = control + planted + rng.normal(0, 0.1, 900)
    t = paired_users(variant, control, resamples=4000, seed=0)
    assert t.p < 0.001
    assert t.lo < planted < t.hi
    assert abs(t.diff - (variant - control).mean()) < 1e-12


def test_identical_rankings_give_p_one_and_a_zero_interval():
    x = np.array([0.0, 0.5, 1.0])
    t = paired_users(x, x.copy())
    assert (t.diff, t.lo, t.hi, t.p) == (0.0, 0.0, 0.0, 1.0)


def test_the_p_value_is_never_zero_with_finitely_many_sign_flips():
    t = paired_users(np.ones(50), np.zeros(50), resamples=999)
    assert t.p == 1 / 1000


def test_users_must_be_paired():
    try:
        paired_users(np.zeros(3), np.zeros(4))
    except ValueError as exc:
        assert "same users" in str(exc)
    else:
        raise AssertionError("unpaired arrays were accepted")


def test_spread_over_seeds_is_the_t_interval_of_the_mean():
    s = spread([0.30, 0.32, 0.31, 0.29, 0.33])
    assert math.isclose(s.mean, 0.31)
    assert math.isclose(s.std, np.std([0.30, 0.32, 0.31, 0.29, 0.33], ddof=1))
    half = 2.7764451051977987 * s.std / math.sqrt(5)  # t(0.975, 4)
    assert math.isclose(s.lo, 0.31 - half) and math.isclose(s.hi, 0.31 + half)
    assert math.isnan(spread([0.3]).std)


def test_paired_seeds_finds_a_consistent_gain_and_not_a_seed_to_seed_wobble():
    control = np.array([0.300, 0.310, 0.305, 0.295, 0.315])
    consistent = paired_seeds(control + np.array([0.010, 0.012, 0.009, 0.011, 0.010]), control)
    wobble = paired_seeds(control + np.array([0.010, -0.012, 0.004, -0.006, 0.003]), control)
    assert consistent.p < 0.001 and consistent.lo > 0
    assert wobble.p > 0.2 and wobble.lo < 0 < wobble.hi
    assert math.isnan(paired_seeds([0.3], [0.2]).p)


def test_marks_follow_the_paper_and_combined_takes_the_larger_p():
    assert (mark(0.005), mark(0.03), mark(0.2), mark(float("nan"))) == ("**", "*", "", "")
    assert combined(0.001, 0.04) == 0.04
    assert combined(0.02, None) == 0.02


def _fitted(name, valid, test, recall_valid=None):
    users = np.arange(len(valid))
    per_user = pl.concat([
        pl.DataFrame({"split": "valid", "user": users, "recall": valid, "ndcg": valid}),
        pl.DataFrame({"split": "test", "user": users, "recall": test, "ndcg": test}),
    ])
    rows = [{"split": s, "protocol": "all", "segment": "all", "metric": m, "k": 20, "value": float(v.mean())}
            for s, v in (("valid", valid), ("test", test)) for m in ("recall", "ndcg")]
    return Fitted(Variant(name), rows, per_user=per_user)


def test_the_gate_turns_down_a_validation_gain_that_is_within_the_noise():
    rng = np.random.default_rng(3)
    base = _recall_like(rng, 300)
    control = _fitted("control", base, base)
    noisy = base + rng.normal(0, 0.15, 300)
    noisy += 0.002 - (noisy - base).mean()  # +0.002 on average: a gain, but far inside the noise
    data = _fitted("data w=1", noisy, base)
    chosen, steps, _ = choose_levels(control, lambda v: data, [Variant("data w=1")], None, False, GateConfig())
    assert chosen is control
    step = steps[-1]
    assert not step.kept and "turned down" in step.reason and "p < 0.05" in step.reason
    assert step.metrics["valid_recall@20_p"] > 0.05


def test_the_gate_keeps_a_gain_above_the_noise_and_reports_its_test_interval():
    rng = np.random.default_rng(4)
    base = _recall_like(rng, 300)
    control = _fitted("control", base, base)
    test = base + 0.04 + rng.normal(0, 0.05, 300)
    data = _fitted("data w=1", base + 0.05 + rng.normal(0, 0.05, 300), test)
    chosen, steps, _ = choose_levels(control, lambda v: data, [Variant("data w=1")], None, False, GateConfig())
    assert chosen is data
    row = steps[-1].as_row()
    assert row["kept"] and row["valid_recall@20_p"] < 0.01
    assert 0 < row["test_recall@20_lo"] < (test - base).mean() < row["test_recall@20_hi"]
    assert row["test_recall@20_p"] < 0.01
    text = "\n".join(format_chain([s.as_row() for s in steps]))
    assert "**" in text and "p=<0.001" in text


def test_max_p_one_turns_the_noise_rule_off():
    rng = np.random.default_rng(3)
    base = _recall_like(rng, 300)
    control = _fitted("control", base, base)
    noisy = base + rng.normal(0, 0.15, 300)
    noisy += 0.002 - (noisy - base).mean()
    data = _fitted("data w=1", noisy, base)
    chosen, _, _ = choose_levels(control, lambda v: data, [Variant("data w=1")], None, False, GateConfig(max_p=1.0))
    assert chosen is data

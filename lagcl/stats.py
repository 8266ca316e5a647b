"""Is a difference larger than the noise? Paired comparisons of a variant with its control (docs/statistics.md).

Two sources of noise, two tests, both paired:

- **Users** (`paired_users`): the per-user differences d_u = metric_u(variant) - metric_u(control) on the same
  split. The p-value is a sign-flip permutation test: under "the two rankings are equally good", each user's
  difference is as likely to be +d_u as -d_u, so the observed mean is compared with the means of `resamples`
  random sign flips. We use it rather than a t-test because per-user Recall@20/NDCG@20 are bounded, mostly 0 or
  small fractions, with many ties at d_u = 0: the flip test needs no normal approximation. The interval is a
  percentile bootstrap over users. This says whether the gain would hold for other users from the same
  population, with the models as trained.
- **Seeds** (`paired_seeds`): the per-seed differences of the mean metric, variant vs control trained with the
  same seed. A paired t-test over seeds (a handful of values whose spread is the training noise: initialisation,
  sampling order); its interval is the t-interval of the mean difference. This says whether the gain would hold
  for another training run.

`combined` keeps the larger of the two p-values when both exist (a gain is marked only when it is above both
noises), and `mark` turns a p-value into the paper's asterisks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    """A paired comparison: the mean difference (variant - control), its interval and a two-sided p-value."""

    n: int
    diff: float
    lo: float
    hi: float
    p: float
    method: str


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and the t-interval of the mean of a few values (e.g. one per seed)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


def paired_users(variant: np.ndarray, control: np.ndarray, resamples: int = 10000, seed: int = 0,
                 level: float = 0.95) -> Paired:
    """Sign-flip permutation test and percentile-bootstrap interval of mean(variant - control) over users.

    `variant[i]` and `control[i]` must be the same user's metric. p = (1 + #{|flipped mean| >= |observed|}) /
    (1 + resamples), so it is never 0 and a finite number of resamples cannot overstate significance."""
    a, b = np.asarray(variant, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_users needs two 1-d arrays of the same users, got shapes {a.shape} and {b.shape}")
    d = a - b
    n = d.size
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, "sign-flip permutation over users")
    obs = float(d.mean())
    if not np.any(d):
        return Paired(n, 0.0, 0.0, 0.0, 1.0, "sign-flip permutation over users")
    rng = np.random.default_rng(seed)
    extreme, means = 0, []
    chunk = max(1, min(resamples, 2_000_000 // n))  # bounded memory whatever the number of users
    tol = 1e-12 * max(1.0, abs(obs))
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ d) / n >= abs(obs) - tol))
        means.append(d[rng.integers(0, n, size=(m, n))].mean(axis=1))
    boot = np.concatenate(means)
    alpha = (1.0 - level) / 2.0
    return Paired(n, obs, float(np.quantile(boot, alpha)), float(np.quantile(boot, 1.0 - alpha)),
                  (1 + extreme) / (1 + resamples), "sign-flip permutation over users")


def spread(values, level: float = 0.95) -> Spread:
    """Mean, standard deviation (n - 1) and t-interval of the mean; one value has no spread (nan)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Spread(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t_quantile(level, n - 1) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def paired_seeds(variant, control, level: float = 0.95) -> Paired:
    """Paired t-test over seeds: `variant[s]` and `control[s]` trained with the same seed s."""
    a, b = np.asarray(variant, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_seeds needs one value per seed for both, got {a.size} and {b.size}")
    d = a - b
    s = spread(d, level)
    if s.n < 2:
        return Paired(s.n, s.mean, math.nan, math.nan, math.nan, "paired t over seeds")
    if s.std == 0.0:  # every seed moved by exactly the same amount: no spread to test against
        return Paired(s.n, s.mean, s.mean, s.mean, 1.0 if s.mean == 0 else 0.0, "paired t over seeds")
    from scipy.stats import t as student_t

    t = s.mean / (s.std / math.sqrt(s.n))
    return Paired(s.n, s.mean, s.lo, s.hi, float(2.0 * student_t.sf(abs(t), s.n - 1)), "paired t over seeds")


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2.0, df))


def combined(p_users: float, p_seeds: float | None = None) -> float:
    """The p-value a mark is given for: the larger of the users' and the seeds' when both were measured."""
    ps = [p for p in (p_users, p_seeds) if p is not None and not math.isnan(p)]
    return max(ps) if ps else math.nan


def mark(p: float) -> str:
    """The paper's significance marks: ** p < 0.01 (its Table 2), * p < 0.05, nothing otherwise."""
    if p is None or math.isnan(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"

"""The statistics of the study: summaries over seeds, paired differences with 95% intervals, the
three kinds of verdict, and a permutation test.

A seed fixes a run's initial weights, its training images and its validation images, so two rows
are compared *paired*: per seed both share, the difference of their values; then the mean
difference and its 95% interval, mean +- t(0.975, n - 1) * sd / sqrt(n). A verdict is read off
that interval:

- ``supported``: the interval lies on the side the claim predicts (it excludes no difference);
- ``contradicted``: it lies on the other side;
- ``inconclusive``: it contains no difference (or fewer than 2 seeds are shared);
- ``not reproduced``: it contains no difference but excludes the paper's own difference (the
  effect the paper reports is not there, though its sign is undecided).

Each verdict also carries the two-sided p-value of its paired t-test and the Holm-adjusted one
over all the study's tested claims (:func:`holm`): a family-wise check beside each verdict.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

SUPPORTED, INCONCLUSIVE, CONTRADICTED = "supported", "inconclusive", "contradicted"
NOT_REPRODUCED = "not reproduced"
KINDS = (SUPPORTED, INCONCLUSIVE, NOT_REPRODUCED, CONTRADICTED)
#: the family-wise error rate of the Holm correction
FAMILY_ALPHA = 0.05

#: t(0.975, df): the two-sided 95% quantile of Student's t with df degrees of freedom
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip


def t_975(df: int) -> float:
    """t(0.975, df), from the table (the next smaller tabulated df between entries: conservative)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return 1.960
    return T_975[max(k for k in T_975 if k <= df)]


def summary(values: list[float]) -> dict:
    """Mean, standard deviation, min, max and number of the values (``None`` entries left out)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


@dataclass(frozen=True)
class Interval:
    """The mean of some per-seed values (or differences) with its 95% interval."""

    mean: float
    low: float
    high: float
    n: int
    seeds: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "seeds": list(self.seeds)}


def interval(per_seed: dict[str, float]) -> Interval | None:
    """Mean and 95% t-interval of per-seed values; ``None`` with fewer than 2 seeds."""
    seeds = tuple(sorted(per_seed, key=str))
    values = [per_seed[s] for s in seeds]
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values), seeds)


def paired_difference(a: dict[str, float], b: dict[str, float]) -> Interval | None:
    """The 95% interval of a - b over the seeds both have (``None`` if they share fewer than 2)."""
    return interval({s: a[s] - b[s] for s in a if s in b})


def verdict_greater(diff: Interval | None, margin: float = 0.0, paper: float | None = None) -> str:
    """A claim that a > b + margin: supported if the interval of a - b lies above ``margin``,
    contradicted if it lies below it; otherwise not reproduced if the paper's own difference
    ``paper`` (> margin) lies above the interval, inconclusive if not."""
    if diff is None:
        return INCONCLUSIVE
    if diff.low > margin:
        return SUPPORTED
    if diff.high < margin:
        return CONTRADICTED
    if paper is not None and paper > margin and diff.high < paper:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdict_not_greater(diff: Interval | None, margin: float) -> str:
    """A claim of *no gain* (a is not better than b): supported if the interval of a - b lies below
    ``margin`` (any gain is smaller than that), contradicted if it lies above 0 (a real gain)."""
    if diff is None:
        return INCONCLUSIVE
    if diff.low > 0:
        return CONTRADICTED
    if diff.high < margin:
        return SUPPORTED
    return INCONCLUSIVE


def verdict_below(values: Interval | None, limit: float) -> str:
    """A claim that a value is below ``limit``: supported if its interval lies below, contradicted above."""
    if values is None:
        return INCONCLUSIVE
    return SUPPORTED if values.high < limit else CONTRADICTED if values.low > limit else INCONCLUSIVE


def verdict_all(kinds: list[str]) -> str:
    """Several claims together (an ordering): supported if each is, contradicted if any is."""
    if any(k == CONTRADICTED for k in kinds):
        return CONTRADICTED
    return SUPPORTED if kinds and all(k == SUPPORTED for k in kinds) else INCONCLUSIVE


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t))


def p_value(diff: Interval | None, margin: float = 0.0) -> float | None:
    """Two-sided p-value of the paired t-test of mean difference = ``margin`` (recovered from the
    interval: its half-width is t(0.975, n - 1) * sd / sqrt(n)); ``None`` without an interval."""
    if diff is None:
        return None
    half = (diff.high - diff.low) / 2
    if half <= 0:
        return 0.0 if diff.mean != margin else 1.0
    return t_two_sided_p((diff.mean - margin) / (half / t_975(diff.n - 1)), diff.n - 1)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (``None`` entries stay ``None``): an
    adjusted p below :data:`FAMILY_ALPHA` keeps the family-wise error rate at that level."""
    tested = sorted((p, k) for k, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[k] = running
    return adjusted


def permutation_p(a: np.ndarray, b: np.ndarray, *, rounds: int = 10000, seed: int = 0) -> float:
    """Two-sided permutation test of mean(a) - mean(b): the share of label shuffles at least as extreme."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        hits += abs(pooled[: len(a)].mean() - pooled[len(a) :].mean()) >= observed - 1e-12
    return (hits + 1) / (rounds + 1)

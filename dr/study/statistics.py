"""The statistics of the study: summaries over seeds, paired comparisons, a permutation test."""

from __future__ import annotations

import math
import statistics

import numpy as np


def summary(values: list[float]) -> dict:
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


def mean_of(rows, name, key="miou"):
    return rows[name][key]["mean"] if name in rows and rows[name][key]["n"] else None


def compare(rows, a: str, b: str, key: str = "miou") -> tuple[str, float | None, float | None]:
    """Sign of mean(a) - mean(b) against its noise: 'greater', 'smaller' or 'tie' (within one
    standard error of the difference).

    Rows trained on the same seeds are compared *paired*: a seed fixes the initial weights, the
    training images and the validation images of every row, so the per-seed differences carry
    less noise than the rows themselves (standard error = std of the differences / sqrt(n)).
    Otherwise, unpaired: sqrt(sa^2 / na + sb^2 / nb)."""
    if a not in rows or b not in rows:
        return "missing", None, None
    per_a, per_b = rows[a].get(f"{key}_per_seed"), rows[b].get(f"{key}_per_seed")
    common = sorted(set(per_a) & set(per_b)) if per_a and per_b else []
    if len(common) >= 2:
        diffs = [per_a[s] - per_b[s] for s in common]
        diff, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    else:
        ra, rb = rows[a][key], rows[b][key]
        diff = ra["mean"] - rb["mean"]
        se = math.sqrt(ra["std"] ** 2 / ra["n"] + rb["std"] ** 2 / rb["n"])
    if abs(diff) <= se:
        return "tie", diff, se
    return ("greater" if diff > 0 else "smaller"), diff, se


def pairing(rows, a: str, b: str) -> str:
    per_a, per_b = rows[a].get("miou_per_seed"), rows[b].get("miou_per_seed")
    common = set(per_a or ()) & set(per_b or ())
    return f"paired over {len(common)} seeds" if len(common) >= 2 else "unpaired"

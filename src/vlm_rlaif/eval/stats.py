"""Means with percentile-bootstrap confidence intervals.

Scores are means of 0-5 judge scores; accuracies are means of 0/1 outcomes (yes/(yes+no)). The
interval resamples the items with replacement `resamples` times (seeded), takes the statistic of each
resample, and reports the (1-confidence)/2 and (1+confidence)/2 percentiles of those statistics
(numpy's linear interpolation between order statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES_PER_CHUNK = 256  # bounds memory: a chunk holds RESAMPLES_PER_CHUNK x n indices


@dataclass
class Estimate:
    """A mean over `n` items with its interval; all None when n == 0 (nothing valid to average)."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_interval(statistics: Sequence[float], confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of the bootstrap statistics (percentile method)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.asarray(statistics, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_means(values: Sequence[float], resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` resamples (with replacement, same size) of `values`."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, RESAMPLES_PER_CHUNK):
        count = min(RESAMPLES_PER_CHUNK, resamples - start)
        means.append(data[rng.integers(0, data.size, size=(count, data.size))].mean(axis=1))
    return np.concatenate(means) if means else np.empty(0)


def estimate_mean(values: Sequence[float], *, resamples: int, confidence: float, seed: int) -> Estimate:
    """Mean of `values` with a percentile-bootstrap interval (resamples=0: no interval)."""
    if len(values) == 0:
        return Estimate(None, None, None, 0)
    value = float(np.mean(np.asarray(values, dtype=float)))
    if resamples <= 0:
        return Estimate(value, None, None, len(values))
    low, high = percentile_interval(bootstrap_means(values, resamples, seed), confidence)
    return Estimate(value, low, high, len(values))


__all__ = ["Estimate", "bootstrap_means", "estimate_mean", "percentile_interval"]

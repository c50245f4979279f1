"""Means with 95% bootstrap intervals, resampling cases rather than images.

The images of one case share a prompt, a person and (across methods) the initial noise, so they are not independent:
an interval over images would be too narrow. :func:`bootstrap_mean` therefore resamples whole cases (a cluster
bootstrap) and recomputes the image-weighted mean, the statistic the tables report. The percentile interval of
``resamples`` such means is the interval; its seed is fixed, so a table is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over ``images`` finite scores from ``cases`` cases, with its bootstrap interval ``[low, high]``.

    With no finite score every number is NaN; with one case the interval is that case's mean (nothing to resample).
    """

    mean: float
    low: float
    high: float
    images: int
    cases: int

    def to_json(self) -> dict[str, float | int | None]:
        def number(v: float) -> float | None:
            return round(v, 6) if math.isfinite(v) else None

        return {"mean": number(self.mean), "low": number(self.low), "high": number(self.high), "images": self.images}


def bootstrap_mean(
    clusters: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """The mean of all finite values and its percentile interval under resampling of ``clusters`` (cases).

    Example: two cases of two images each, ``[[0.5, 0.7], [0.1, 0.1]]``, have the mean 0.35; each resample takes two
    cases with replacement, so the interval is inside ``[0.1, 0.6]`` (both draws the second case, or the first).
    NaN values (images that could not be scored) are left out; a case left with none is dropped.
    """
    groups = list(clusters.values()) if isinstance(clusters, Mapping) else list(clusters)
    finite = [np.asarray([v for v in g if v is not None and math.isfinite(v)], dtype=np.float64) for g in groups]
    finite = [g for g in finite if g.size]
    if not finite:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    sums = np.array([g.sum() for g in finite])
    counts = np.array([g.size for g in finite], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    if len(finite) == 1:
        return Estimate(mean, mean, mean, int(counts.sum()), 1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(finite), size=(resamples, len(finite)))  # (R, C) case indices
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (R,)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Estimate(mean, float(low), float(high), int(counts.sum()), len(finite))

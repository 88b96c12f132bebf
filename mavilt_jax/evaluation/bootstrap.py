"""Percentile-bootstrap 95 % confidence intervals over studies.

Every figure is a statistic of a set of studies; a resample draws as many studies as there are,
with replacement, and recomputes the statistic on the resampled set (corpus-level metrics are
recomputed, not averaged: see ``nlg.NLGScorer.score`` and ``clinical.ce_from_counts``). The CI
is the (alpha/2, 1 - alpha/2) percentile of the resampled values (resamples where a figure is
undefined, e.g. AUROC with one class, are left out of that figure's interval).
The same seed gives the same resampled index sets for every figure of a task, so figures of one
task are resampled jointly.

A statistic that a resample biases (Frechet distance: the duplicated studies of a resample shrink
its effective size, which inflates FD) gets the basic ("reverse percentile") interval instead,
[2 v - hi, 2 v - lo], which removes a bias common to all resamples; its percentile interval can
lie wholly above the point estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A figure with its percentile-bootstrap interval and the number of studies it is over."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    resamples: int

    def to_json(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """int [resamples, n] study indices drawn with replacement."""
    if n < 1:
        raise ValueError("cannot resample an empty set")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [alpha, 100.0 - alpha])
    return float(lo), float(hi)


def bootstrap(statistic: Callable[[np.ndarray], Mapping[str, float]], n: int, resamples: int = 1000,
              seed: int = 0, confidence: float = 0.95, method: str = "percentile") -> dict[str, Estimate]:
    """Bootstraps every figure that ``statistic(study_indices) -> {name: value}`` returns.

    ``statistic(np.arange(n))`` gives the point estimates. ``method``: "percentile", or "basic"
    for statistics that resampling biases (see the module docstring).
    """
    if method not in ("percentile", "basic"):
        raise ValueError(f"method={method!r}; expected 'percentile' or 'basic'")
    point = dict(statistic(np.arange(n)))
    draws: dict[str, list[float]] = {name: [] for name in point}
    for idx in resample_indices(n, resamples, seed):
        values = statistic(idx)
        for name in point:
            draws[name].append(float(values.get(name, np.nan)))
    out = {}
    for name, value in point.items():
        lo, hi = percentile_interval(np.array(draws[name]), confidence)
        if method == "basic":
            lo, hi = 2.0 * float(value) - hi, 2.0 * float(value) - lo
        out[name] = Estimate(float(value), lo, hi, n, resamples)
    return out

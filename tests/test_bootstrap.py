"""Percentile bootstrap: against scipy.stats.bootstrap and a hand-rolled loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mavilt_jax.evaluation import bootstrap


def test_mean_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=200)
    ours = bootstrap.bootstrap(lambda idx: {"mean": x[idx].mean()}, len(x), resamples=2000, seed=1)["mean"]
    ref = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile",
                          random_state=np.random.default_rng(1)).confidence_interval
    assert ours.value == pytest.approx(x.mean())
    # Different random draws: the intervals agree to Monte-Carlo error.
    assert ours.ci_low == pytest.approx(ref.low, abs=0.02)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.02)
    assert ours.ci_low < ours.value < ours.ci_high and ours.n == 200 and ours.resamples == 2000


def test_equals_hand_loop_and_skips_undefined():
    x = np.arange(10.0)

    def stat(idx):
        # A ratio figure that is undefined on some resamples.
        return {"max": x[idx].max(), "ratio": np.nan if (x[idx] < 2).all() else x[idx].mean()}

    out = bootstrap.bootstrap(stat, 10, resamples=50, seed=3)
    idx = np.random.default_rng(3).integers(0, 10, size=(50, 10))
    maxes = x[idx].max(1)
    np.testing.assert_allclose([out["max"].ci_low, out["max"].ci_high], np.percentile(maxes, [2.5, 97.5]), rtol=1e-12)
    assert np.isfinite(out["ratio"].ci_low)


def test_basic_interval_matches_scipy():
    """The basic interval (for biased statistics such as FD) against scipy's method="basic"."""
    rng = np.random.default_rng(0)
    x = rng.exponential(size=200)
    ours = bootstrap.bootstrap(lambda idx: {"var": x[idx].var()}, len(x), resamples=2000, seed=1,
                               method="basic")["var"]
    ref = stats.bootstrap((x,), np.var, n_resamples=2000, method="basic",
                          random_state=np.random.default_rng(1)).confidence_interval
    assert ours.value == pytest.approx(x.var())
    assert ours.ci_low == pytest.approx(ref.low, abs=0.05) and ours.ci_high == pytest.approx(ref.high, abs=0.05)
    with pytest.raises(ValueError, match="method"):
        bootstrap.bootstrap(lambda idx: {"v": 0.0}, 3, method="bca")


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        bootstrap.resample_indices(0, 10, 0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap.resample_indices(5, 0, 0)

"""Statistics of a reader study: agreement, consistency, paired comparisons, all with CIs.

  * Inter-reader agreement: Krippendorff's alpha with the ordinal metric (Krippendorff 2011,
    "Computing Krippendorff's alpha-reliability"), alpha = 1 - D_o / D_e over a readers x cases
    matrix with missing ratings, from the ``krippendorff`` package; the CI resamples cases.
  * Intra-reader consistency: the same alpha with a reader's first and second rating of a
    duplicated case as the two "coders" (pooled over readers), exact agreement and the mean
    absolute difference; CIs resample (reader, case) pairs.
  * Paired comparison of two systems on the studies both were rated on: the mean difference of
    per-study mean ratings with a paired bootstrap CI (studies resampled), and the Wilcoxon
    signed-rank test on those differences (scipy; zero differences dropped, two-sided).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from mavilt_jax.evaluation import bootstrap

VALUE_DOMAIN = (1, 2, 3, 4, 5)


def alpha_ordinal(reliability: np.ndarray) -> float:
    """Krippendorff's ordinal alpha of float [coders, units] (NaN = not rated); NaN when fewer
    than two pairable ratings exist or every rating is the same value (alpha undefined)."""
    import krippendorff

    data = np.asarray(reliability, np.float64)
    pairable = np.isfinite(data).sum(axis=0) >= 2
    values = data[:, pairable]
    if not pairable.any() or np.unique(values[np.isfinite(values)]).size < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=data[:, pairable], value_domain=list(VALUE_DOMAIN),
                                    level_of_measurement="ordinal"))


def inter_reader(reliability: np.ndarray, resamples: int, seed: int) -> dict:
    """Alpha over readers x cases with a CI over cases, and how many cases had >= 2 readers."""
    data = np.asarray(reliability, np.float64)
    keep = np.isfinite(data).sum(axis=0) >= 2
    data = data[:, keep]
    if data.shape[1] == 0:
        return {"alpha": None, "pairable_cases": 0, "readers": int(reliability.shape[0])}
    est = bootstrap.bootstrap(lambda idx: {"alpha": alpha_ordinal(data[:, idx])}, data.shape[1], resamples, seed)
    return {"alpha": est["alpha"].to_json(), "pairable_cases": int(data.shape[1]), "readers": int(data.shape[0])}


def intra_reader(first: np.ndarray, second: np.ndarray, resamples: int, seed: int) -> dict:
    """Consistency of repeated ratings: ``first[i]`` and ``second[i]`` are one reader's two
    ratings of one case."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    n = first.size
    if n == 0:
        return {"pairs": 0}

    def figures(idx):
        a, b = first[idx], second[idx]
        return {"alpha": alpha_ordinal(np.stack([a, b])), "exact_agreement": float(np.mean(a == b)),
                "mean_abs_difference": float(np.mean(np.abs(a - b)))}

    est = bootstrap.bootstrap(figures, n, resamples, seed)
    return {"pairs": int(n), **{k: v.to_json() for k, v in est.items()}}


def paired_comparison(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> dict:
    """System A vs B on per-study mean ratings (NaN where a system's case was not rated)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if d.size == 0:
        return {"studies": 0}
    est = bootstrap.bootstrap(lambda idx: {"difference": float(np.mean(d[idx]))}, d.size, resamples, seed)
    out = {"studies": int(d.size), "difference": est["difference"].to_json()}
    if np.any(d != 0):
        w = scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["wilcoxon"] = {"statistic": float(w.statistic), "p_value": float(w.pvalue),
                           "nonzero_differences": int(np.count_nonzero(d))}
    else:
        out["wilcoxon"] = {"statistic": None, "p_value": 1.0, "nonzero_differences": 0}
    return out


def system_means(per_study: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, dict]:
    """Mean rating per system (over its studies' per-study mean ratings) with CIs from resampling
    the studies, jointly for all systems (the same resampled studies for each)."""
    names = list(per_study)
    matrix = np.stack([np.asarray(per_study[n], np.float64) for n in names])  # [systems, studies]

    def means(idx):
        sub = matrix[:, idx]
        counts = np.isfinite(sub).sum(axis=1)
        sums = np.where(np.isfinite(sub), sub, 0.0).sum(axis=1)
        return {n: (sums[i] / counts[i] if counts[i] else float("nan")) for i, n in enumerate(names)}

    est = bootstrap.bootstrap(means, matrix.shape[1], resamples, seed)
    return {n: {**est[n].to_json(), "studies_rated": int(np.isfinite(matrix[i]).sum())} for i, n in enumerate(names)}

"""PSNR, SSIM and codebook statistics against independent slow references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mavilt_jax.evaluation import image_metrics


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al. 2004 written out: a loop over every valid 11x11 window, Gaussian weights sigma 1.5."""
    size, sigma = 11, 1.5
    r = np.arange(size) - 5.0
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a = x[i : i + size, j : j + size].astype(np.float64)
            b = y[i : i + size, j : j + size].astype(np.float64)
            mu_a, mu_b = (w * a).sum(), (w * b).sum()
            var_a = (w * (a - mu_a) ** 2).sum()
            var_b = (w * (b - mu_b) ** 2).sum()
            cov = (w * (a - mu_a) * (b - mu_b)).sum()
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_matches_windowed_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 20, 24, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    expected = np.mean([_ssim_reference(x[b, :, :, 0], y[b, :, :, 0], 2.0) for b in range(2)])
    np.testing.assert_allclose(image_metrics.ssim(x, y, data_range=2.0), expected, rtol=1e-4)
    np.testing.assert_allclose(image_metrics.ssim(x, x), 1.0, rtol=1e-5)


def test_psnr_hand_computed():
    x = np.zeros((2, 4, 4, 1), np.float32)
    y = x.copy()
    y[0] += 0.1  # MSE 0.01 -> 10 log10(4 / 0.01)
    y[1] += 0.2  # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB
    expected = (10 * np.log10(4 / 0.01) + 20.0) / 2
    np.testing.assert_allclose(image_metrics.psnr(x, y, data_range=2.0), expected, rtol=1e-5)


def test_codebook_usage_and_perplexity():
    codes = jnp.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    counts = image_metrics.code_histogram(codes, 8)
    np.testing.assert_array_equal(counts, [2, 2, 2, 2, 0, 0, 0, 0])
    np.testing.assert_allclose(image_metrics.codebook_usage(counts), 0.5)
    np.testing.assert_allclose(image_metrics.codebook_perplexity(counts), 4.0, rtol=1e-6)
    # Skewed use: p = (3/4, 1/4) -> exp(H) with H = -(3/4 ln 3/4 + 1/4 ln 1/4).
    skewed = image_metrics.code_histogram(jnp.array([5, 5, 5, 6]), 8)
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(image_metrics.codebook_perplexity(skewed), np.exp(h), rtol=1e-6)

"""Reconstruction metrics of the tokenizer: PSNR, SSIM, codebook usage and perplexity.

Images are [B, H, W, C] arrays in a known range (``data_range`` = max - min, 2.0 for [-1, 1]).
Per-image values are averaged over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def psnr(x: jax.Array, y: jax.Array, *, data_range: float = 2.0) -> jax.Array:
    """Mean over images of 10 log10(data_range^2 / MSE)."""
    mse = jnp.mean((x.astype(jnp.float32) - y.astype(jnp.float32)) ** 2, axis=tuple(range(1, x.ndim)))
    return jnp.mean(10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-12)))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian window [size, size]."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def ssim(
    x: jax.Array, y: jax.Array, *, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5
) -> jax.Array:
    """Structural similarity (Wang et al. 2004): Gaussian 11x11 window, sigma 1.5, K1=0.01, K2=0.03.

    Local statistics are computed over the 'valid' window positions (no padding), per channel, and
    the SSIM map is averaged per image, then over the batch.
    """
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    C = x.shape[-1]
    window = jnp.asarray(gaussian_window(window_size, sigma), jnp.float32)
    kernel = jnp.tile(window[:, :, None, None], (1, 1, 1, C))  # depthwise [k, k, 1, C]

    def filt(a):
        return jax.lax.conv_general_dilated(
            a, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C
        )

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return jnp.mean(jnp.mean(ssim_map, axis=(1, 2, 3)))


def code_histogram(codes: jax.Array, codebook_size: int) -> jax.Array:
    """Counts of each code id among ``codes`` (any shape) -> [K] float32."""
    return jnp.zeros((codebook_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)


def codebook_usage(counts: jax.Array) -> jax.Array:
    """Fraction of codes used at least once, from a histogram [K]."""
    return jnp.mean((counts > 0).astype(jnp.float32))


def codebook_perplexity(counts: jax.Array) -> jax.Array:
    """exp(entropy) of the code distribution, from a histogram [K]; K when all codes are equally used."""
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))

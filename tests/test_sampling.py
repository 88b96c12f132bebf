"""The sampler against a slow reference that recomputes the whole sequence at every step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavilt_jax import sampling
from mavilt_jax.models.llm import Decoder
from mavilt_jax.testing import TINY_LAYOUT as L
from mavilt_jax.testing import tiny_llm

WIDTH = 32  # reference buffer: prompt + generated tokens, right-padded (causal, so padding is inert)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    # Tiny models: compile time dominates, and XLA's optimisations do not change these numerics.
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def model():
    # Larger weights give peaked distributions, so greedy paths are not decided by rounding.
    return tiny_llm(seed=3, scale=6.0)


def _left_pad(prompts):
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), L.pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _full_forward(config, params, tokens):
    return Decoder(config).apply({"params": params}, tokens, jnp.arange(WIDTH)[None])[0][0]


def _reference_logits(config, params, seq):
    """Next-token logits after ``seq`` from one uncached pass over the whole (right-padded) sequence."""
    buf = np.full((1, WIDTH), L.pad_id, np.int32)
    buf[0, :len(seq)] = seq
    return np.asarray(_full_forward(config, params, buf))[len(seq) - 1]


def _reference_allowed(mode, in_image, codes):
    """Written out per id, independently of the sampler's vectorised rule."""
    allowed = np.zeros(L.size, bool)
    for i in range(L.size):
        is_code = L.image_offset <= i < L.special_offset
        if in_image:
            allowed[i] = is_code if codes < L.codes_per_image else i == L.eoi_id
        elif mode == "text":
            allowed[i] = i < L.text_vocab_size
        elif mode == "image":
            allowed[i] = i == L.boi_id
        else:
            allowed[i] = i < L.text_vocab_size or i == L.boi_id
    return allowed


def reference_greedy(config, params, prompt, n, mode="text", uncond_prompt=None, scale=1.0):
    """Greedy decoding of one unpadded prompt, recomputing the full sequence each step."""
    seq, useq = list(prompt), list(uncond_prompt or [])
    out, logprobs = [], []
    in_image, codes = prompt[-1] == L.boi_id, 0
    for _ in range(n):
        logits = _reference_logits(config, params, seq)
        if uncond_prompt is not None:
            u = _reference_logits(config, params, useq)
            logits = u + scale * (logits - u)
        logits = np.where(_reference_allowed(mode, in_image, codes), logits, -np.inf)
        token = int(np.argmax(logits))
        logprobs.append(float(jax.nn.log_softmax(jnp.asarray(logits))[token]))
        out.append(token)
        seq.append(token)
        useq.append(token)
        if token == L.boi_id:
            in_image, codes = True, 0
        elif token == L.eoi_id:
            in_image = False
        elif L.image_offset <= token < L.special_offset:
            codes += 1
        if (mode == "image" and token == L.eoi_id) or (mode != "image" and token == L.eos_id):
            break
    return out, logprobs


PROMPTS = [[5, 6, 7, 8], [1, 3, 4, 9, 11, 12, 13], [17, 30]]


@pytest.mark.parametrize("mode", ["text", "any", "image"])
def test_cached_greedy_equals_full_recompute(model, mode):
    config, params = model
    n = 10
    tokens, lengths = _left_pad(PROMPTS)
    out = sampling.generate(params, config, tokens, lengths, sampler=sampling.Sampler(n, mode=mode, temperature=0.0),
                            rng=jax.random.key(0), layout=L)
    for row, prompt in enumerate(PROMPTS):
        ref, ref_logprobs = reference_greedy(config, params, prompt, n, mode)
        got = np.asarray(out.tokens[row])
        assert int(out.lengths[row]) == len(ref)
        np.testing.assert_array_equal(got[:len(ref)], ref)
        assert np.all(got[len(ref):] == L.pad_id)
        np.testing.assert_allclose(np.asarray(out.logprobs[row, :len(ref)]), ref_logprobs, atol=1e-4)


def test_rows_in_a_batch_equal_rows_alone(model):
    config, params = model
    sampler = sampling.Sampler(10, mode="any", temperature=0.0)  # as above: the batched call is compiled already
    tokens, lengths = _left_pad(PROMPTS)
    batched = sampling.generate(params, config, tokens, lengths, sampler=sampler, rng=jax.random.key(0), layout=L)
    for row in (0, 1):  # the shortest-padded and the unpadded row (one compilation each)
        prompt = PROMPTS[row]
        alone = sampling.generate(params, config, np.array([prompt]), np.array([len(prompt)]), sampler=sampler,
                                  rng=jax.random.key(0), layout=L)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(batched.tokens[row]))
        assert int(alone.lengths[0]) == int(batched.lengths[row])


def test_image_mode_yields_exactly_one_full_image(model):
    config, params = model
    n_codes = L.codes_per_image
    tokens, lengths = _left_pad([[5, 6], [7], [9, 10, L.boi_id], [3, 4, 5]] * 4)
    out = sampling.generate(params, config, tokens, lengths, sampler=sampling.Sampler(12, mode="image", temperature=2.0),
                            rng=jax.random.key(1), layout=L)
    for row in range(tokens.shape[0]):
        seq = np.asarray(out.tokens[row])
        opened = tokens[row, -1] == L.boi_id  # the prompt already opened the span
        span = seq if opened else seq[1:]
        assert opened or seq[0] == L.boi_id
        assert np.all((span[:n_codes] >= L.image_offset) & (span[:n_codes] < L.special_offset))
        assert span[n_codes] == L.eoi_id
        assert int(out.lengths[row]) == n_codes + 1 + (not opened)
        assert np.all(seq[int(out.lengths[row]):] == L.pad_id)


def test_any_mode_spans_are_complete_and_text_mode_has_no_image_tokens(model):
    config, params = model
    tokens, lengths = _left_pad([[5, 6], [7, 8, 9]] * 8)
    n = 24
    out = sampling.generate(params, config, tokens, lengths,
                            sampler=sampling.Sampler(n, mode="any", temperature=3.0, stop_at_eos=False),
                            rng=jax.random.key(2), layout=L)
    spans = 0
    for seq in np.asarray(out.tokens):
        i = 0
        while i < n:
            if seq[i] == L.boi_id:
                codes = seq[i + 1:i + 1 + L.codes_per_image]
                assert np.all((codes >= L.image_offset) & (codes < L.special_offset))
                if i + 1 + L.codes_per_image < n:
                    assert seq[i + 1 + L.codes_per_image] == L.eoi_id
                    spans += 1
                i += L.codes_per_image + 2
            else:
                assert seq[i] < L.text_vocab_size, f"token {seq[i]} outside an image span"
                i += 1
    assert spans > 0  # at temperature 3 <boi> is sampled in some rows
    text = sampling.generate(params, config, tokens, lengths, sampler=sampling.Sampler(n, mode="text", temperature=3.0),
                             rng=jax.random.key(2), layout=L)
    live = np.arange(n)[None] < np.asarray(text.lengths)[:, None]
    assert np.all(np.asarray(text.tokens)[live] < L.text_vocab_size)


def test_guidance(model):
    config, params = model
    tokens, lengths = _left_pad(PROMPTS)
    uncond, ulengths = _left_pad([[L.special_id("<uncond>")]] * 3)
    sampler = sampling.Sampler(8, mode="image", temperature=1.0)
    cond = sampling.generate(params, config, tokens, lengths, sampler=sampler, rng=jax.random.key(4), layout=L)
    scale1 = sampling.generate(params, config, tokens, lengths, sampler=sampler, rng=jax.random.key(4), layout=L,
                               uncond_prompt_tokens=uncond, uncond_prompt_lengths=ulengths)
    np.testing.assert_array_equal(np.asarray(cond.tokens), np.asarray(scale1.tokens))
    np.testing.assert_allclose(np.asarray(cond.logprobs), np.asarray(scale1.logprobs), atol=1e-5)
    # scale 3, greedy, against the slow reference combining two full recomputations
    guided = sampling.generate(params, config, tokens, lengths, layout=L, rng=jax.random.key(0),
                               sampler=sampling.Sampler(8, mode="image", temperature=0.0, guidance_scale=3.0),
                               uncond_prompt_tokens=uncond, uncond_prompt_lengths=ulengths)
    for row, prompt in enumerate(PROMPTS):
        ref, _ = reference_greedy(config, params, prompt, 8, "image", [L.special_id("<uncond>")], 3.0)
        np.testing.assert_array_equal(np.asarray(guided.tokens[row, :len(ref)]), ref)


def test_beam_width_one_is_greedy(model):
    config, params = model
    tokens, lengths = _left_pad(PROMPTS)
    greedy = sampling.generate(params, config, tokens, lengths, sampler=sampling.Sampler(10, temperature=0.0),
                               rng=jax.random.key(0), layout=L)
    beam = sampling.beam_search(params, config, tokens, lengths, layout=L, beam_width=1, max_new_tokens=10)
    np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(greedy.tokens))
    np.testing.assert_array_equal(np.asarray(beam.lengths), np.asarray(greedy.lengths))
    np.testing.assert_allclose(np.asarray(beam.scores), np.asarray(greedy.logprobs).sum(1), atol=1e-4)


def test_full_width_beam_search_finds_the_exact_best_pair(model):
    """Two steps with as many beams as text tokens is exhaustive: compare with brute force."""
    config, params = model
    prompt = PROMPTS[1]
    beam = sampling.beam_search(params, config, np.array([prompt]), np.array([len(prompt)]), layout=L,
                                beam_width=L.text_vocab_size, max_new_tokens=2)
    text = slice(0, L.text_vocab_size)
    first = np.asarray(jax.nn.log_softmax(jnp.asarray(_reference_logits(config, params, prompt)[text])))
    best_score, best_seq = first[L.eos_id], [L.eos_id]  # the one-token sequence that stops at once
    for t1 in range(L.text_vocab_size):
        if t1 == L.eos_id:
            continue
        second = np.asarray(jax.nn.log_softmax(jnp.asarray(_reference_logits(config, params, prompt + [t1])[text])))
        t2 = int(np.argmax(second))
        if first[t1] + second[t2] > best_score:
            best_score, best_seq = first[t1] + second[t2], [t1, t2]
    assert list(np.asarray(beam.tokens[0, :len(best_seq)])) == best_seq
    np.testing.assert_allclose(float(beam.scores[0]), best_score, atol=1e-4)


def test_top_k_and_top_p_keep_only_the_head(model):
    config, params = model
    prompt = PROMPTS[0]
    logits = _reference_logits(config, params, prompt)[:L.text_vocab_size]
    order = np.argsort(-logits)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))[order]
    nucleus = set(order[:int(np.searchsorted(np.cumsum(probs), 0.6)) + 1])
    tokens, lengths = _left_pad([prompt] * 64)
    for sampler, allowed in [(sampling.Sampler(1, temperature=1.5, top_k=2), set(order[:2])),
                             (sampling.Sampler(1, temperature=1.0, top_p=0.6), nucleus),
                             (sampling.Sampler(1, temperature=1.0, top_k=1), {order[0]})]:
        out = sampling.generate(params, config, tokens, lengths, sampler=sampler, rng=jax.random.key(5), layout=L)
        seen = set(np.asarray(out.tokens[:, 0]).tolist())
        assert seen <= allowed, (sampler, seen, allowed)
        assert len(allowed) == 1 or len(seen) > 1  # it does sample, not only take the argmax


def test_inverse_cdf_sampling_follows_softmax():
    logits = jnp.array([2.0, 0.0, -1e30, 1.0, -0.5, -1e30])
    probs = np.asarray(jax.nn.softmax(logits))
    n = 20000
    draws = np.asarray(sampling._sample(jnp.tile(logits, (n, 1)), jax.random.key(0)))
    freq = np.bincount(draws, minlength=6) / n
    assert freq[2] == 0 and freq[5] == 0  # masked ids never drawn
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs.max() / n))  # ~4 standard errors


def test_score_continuations_matches_full_forward(model):
    config, params = model
    prompts = [[5, 6, 7], [1, 2, 3, 4, 9]]
    conts = [[11, 12, 13, 14], [20, 21]]
    tokens, lengths = _left_pad(prompts)
    cont = np.full((2, 4), L.pad_id, np.int32)
    for i, c in enumerate(conts):
        cont[i, :len(c)] = c
    total, per_token = sampling.score_continuations(params, config, tokens, lengths, cont, np.array([4, 2]))
    for i, (p, c) in enumerate(zip(prompts, conts)):
        expected = [float(jax.nn.log_softmax(jnp.asarray(_reference_logits(config, params, p + c[:j])))[c[j]])
                    for j in range(len(c))]
        np.testing.assert_allclose(np.asarray(per_token[i, :len(c)]), expected, atol=1e-4)
        np.testing.assert_allclose(float(total[i]), sum(expected), atol=1e-4)


def test_compiles_once_per_shape_not_per_token(model):
    config, params = model
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sampler = sampling.Sampler(20, mode="any", temperature=1.0, stop_at_eos=False)
        tokens, lengths = _left_pad([[3, 4, 5], [6, 7]])
        before = sampling._generate._cache_size()
        first = sampling.generate(params, config, tokens, lengths, sampler=sampler, rng=jax.random.key(0), layout=L)
        jax.block_until_ready(first)
        after_first = len(compiles)
        tokens2, lengths2 = _left_pad([[8, 9, 10], [11]])
        for seed in range(3):  # same shapes, new prompts and keys: no new compilation
            jax.block_until_ready(sampling.generate(params, config, tokens2, lengths2, sampler=sampler,
                                                    rng=jax.random.key(seed), layout=L))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert int(first.lengths.min()) == 20  # all 20 tokens were decoded inside one compiled call
    assert sampling._generate._cache_size() == before + 1
    assert len(compiles) == after_first


def test_bad_arguments_raise_clear_errors(model):
    config, params = model
    with pytest.raises(ValueError, match="mode"):
        sampling.Sampler(4, mode="video")
    with pytest.raises(ValueError, match="codes_per_image"):
        sampling.generate(params, config, np.array([[1]]), np.array([1]), sampler=sampling.Sampler(3, mode="image"),
                          rng=jax.random.key(0), layout=L)
    with pytest.raises(ValueError, match="both"):
        sampling.generate(params, config, np.array([[1]]), np.array([1]), sampler=sampling.Sampler(3),
                          rng=jax.random.key(0), layout=L, uncond_prompt_tokens=np.array([[1]]))

"""Decoding from the multimodal LLM: sampling, beam search, constrained image spans, guidance.

One jitted function per entry point: a prefill over the (left-padded) prompts writes the explicit
KV cache, then a single ``jax.lax.while_loop`` runs the decode steps (no per-token Python), so a
call compiles once per (shapes, sampler) and never per token.

Constrained decoding with the extended vocabulary (`VocabLayout`):
  - inside an image span (after ``<boi>``) only image codes may be emitted, exactly
    ``codes_per_image`` of them, and then ``<eoi>`` is forced;
  - outside a span image codes and ``<eoi>`` are masked; ``<boi>`` is allowed only in mode "any";
  - ``<pad>``, task markers and ``<uncond>`` are never emitted.
Modes: "text" (reports, answers: no image token at all), "image" (``<boi>`` forced unless the
prompt already ends with it, stops after ``<eoi>``), "any" (free interleaving). A prompt that ends
with ``<boi>`` opens a span in every mode: its codes and ``<eoi>`` come first.

Classifier-free guidance (report -> image, Eq. 9 sampling): the conditional and unconditional
prompts run as one batch of 2B rows; the guided logits are uncond + scale * (cond - uncond) and the
token sampled from them is fed to both halves.

Shape legend: B batch rows, P prompt length, N new tokens, C continuation length, V vocabulary,
W beams per row, S cache slots (P + N).
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp

from mavilt_jax.data.vocab import VocabLayout
from mavilt_jax.models.int8 import quantize_int8
from mavilt_jax.models.llm import MASKED_LOGIT, Decoder, KVCache, LLMConfig, init_cache

Array = jax.Array
_MODES = ("text", "image", "any")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Static decoding settings (hashable: a static jit argument).

    max_new_tokens: decode steps N (an image needs codes_per_image + 2 in mode "image").
    mode: "text" | "image" | "any", see the module docstring.
    temperature: softmax temperature; 0 means greedy (argmax).
    top_k: keep the k most likely tokens (0: all). top_p: nucleus mass (1.0: all).
    guidance_scale: classifier-free guidance scale, used when unconditional prompts are given.
    stop_at_eos: a row stops at the text eos (modes "text", "any"); mode "image" stops after <eoi>.
    """

    max_new_tokens: int
    mode: str = "text"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {_MODES}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampler settings: {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@flax.struct.dataclass
class GenerationOutput:
    """tokens [B, N] (``pad_id`` after a row stops), lengths [B] (tokens emitted, the stop token
    included), logprobs [B, N]: log-prob of each emitted token under the constrained (and guided)
    distribution at temperature 1, 0 after the stop."""

    tokens: Array
    lengths: Array
    logprobs: Array


@flax.struct.dataclass
class BeamSearchOutput:
    """tokens [B, N] of the best beam, lengths [B], scores [B] (sum of log-probs / length**alpha)."""

    tokens: Array
    lengths: Array
    scores: Array


# ---- inference precision ------------------------------------------------------------------------

PRECISIONS = ("f32", "bf16", "int8")


def inference_params(config: LLMConfig, params, precision: str = "f32") -> tuple[LLMConfig, dict]:
    """(config, params) for decoding at ``precision``; the decode step streams every weight once
    per token, so fewer weight bytes mean faster decoding at small batch.

    "f32": as given. "bf16": bf16 weights, activations and KV cache (half the bytes; logits are
    float32 at the end). "int8": weight-only int8 matmul kernels and embedding rows with
    per-channel scales (`int8.quantize_int8`, a quarter of the bytes), float32 activations and cache.
    Quality is checked in tests/test_inference_precision.py and by ``python -m benchmarks.run --only decode``.
    """
    if precision == "f32":
        return config, params
    if precision == "bf16":
        cfg = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
        return cfg, jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    if precision == "int8":
        return dataclasses.replace(config, weight_quant="int8"), quantize_int8(params)
    raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")


# ---- masks and positions for left-padded prompts -----------------------------------------------


def prompt_positions_and_mask(prompt_lengths: Array, prompt_len: int, cache_len: int) -> tuple[Array, Array, Array]:
    """For left-padded prompts [B, P]: rotary positions [B, P], prefill mask [B, P, S], pad counts [B]."""
    pad = prompt_len - prompt_lengths  # [B]
    slots = jnp.arange(prompt_len)
    positions = jnp.maximum(slots[None, :] - pad[:, None], 0)  # [B, P]
    keys = jnp.arange(cache_len)
    mask = (keys[None, None, :] <= slots[None, :, None]) & (keys[None, None, :] >= pad[:, None, None])  # [B, P, S]
    return positions, mask, pad


def _step_mask(pad: Array, slot: Array, cache_len: int) -> Array:
    """Mask [B, 1, S] of the token written at ``slot``: its own row's real slots up to itself."""
    keys = jnp.arange(cache_len)
    return ((keys[None, :] <= slot) & (keys[None, :] >= pad[:, None]))[:, None, :]


def _allowed_tokens(layout: VocabLayout, mode: str, vocab_size: int, in_image: Array, codes_done: Array) -> Array:
    """Which ids each row may emit next [B, V] (see the module docstring)."""
    ids = jnp.arange(vocab_size)
    is_text = ids < layout.text_vocab_size
    is_code = (ids >= layout.image_offset) & (ids < layout.special_offset)
    is_boi, is_eoi = ids == layout.boi_id, ids == layout.eoi_id
    outside = {"text": is_text, "image": is_boi, "any": is_text | is_boi}[mode]
    span_open = (in_image & (codes_done < layout.codes_per_image))[:, None]
    span_full = (in_image & (codes_done >= layout.codes_per_image))[:, None]
    return jnp.where(span_open, is_code[None], jnp.where(span_full, is_eoi[None], outside[None]))


def _bisect_threshold(values: Array, lo: Array, hi: Array, keep_enough, iterations: int = 40) -> Array:
    """Largest threshold t in [lo, hi] (per row) with keep_enough(values >= t), by bisection.

    Sorting the vocabulary costs far more than a few dozen masked reductions on CPU, so top-k and
    top-p find their cut-off this way; after ~40 halvings the interval is below float32 spacing.
    """
    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = keep_enough(values >= mid[:, None])
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return jax.lax.fori_loop(0, iterations, body, (lo, hi))[0]


def _truncate(logits: Array, top_k: int, top_p: float) -> Array:
    """Top-k then nucleus (top-p) filtering of logits [B, V]: the rest is set to MASKED_LOGIT."""
    top = jnp.max(logits, axis=-1)
    if top_k:
        # keep the k largest: the largest t with at least k logits >= t (ties at the k-th are kept)
        kth = _bisect_threshold(logits, top - 1e4, top + 1.0, lambda kept: jnp.sum(kept, -1) >= top_k)
        logits = jnp.where(logits >= kth[:, None], logits, MASKED_LOGIT)
    if top_p < 1.0:
        # the smallest set of most likely tokens whose mass reaches top_p
        logp = jax.nn.log_softmax(logits, axis=-1)
        probs = jnp.exp(logp)
        top_logp = jnp.max(logp, axis=-1)
        cut = _bisect_threshold(logp, top_logp - 100.0, top_logp + 1.0,
                                lambda kept: jnp.sum(jnp.where(kept, probs, 0.0), -1) >= top_p)
        logits = jnp.where(logp >= cut[:, None], logits, MASKED_LOGIT)
    return logits


def _sample(logits: Array, key: Array) -> Array:
    """One token per row from softmax(logits) [B, V] by inverting the CDF with one uniform per row.

    Equivalent to ``jax.random.categorical`` but draws B uniforms instead of B * V Gumbels, which
    dominates a decode step on CPU for a 50k vocabulary. Zero-probability (masked) ids are never
    picked: u > 0 and the first id whose cumulative mass reaches u has positive mass.
    """
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [B, V]
    u = (1.0 - jax.random.uniform(key, (logits.shape[0], 1))) * cdf[:, -1:]  # in (0, total]
    return jnp.minimum(jnp.sum(cdf < u, axis=-1), logits.shape[-1] - 1)


def _check(config: LLMConfig, layout: VocabLayout, sampler: Sampler | None = None):
    if config.vocab_size < layout.size:
        raise ValueError(f"config.vocab_size={config.vocab_size} is smaller than the layout's {layout.size} ids")
    if sampler is not None and sampler.mode == "image" and sampler.max_new_tokens < layout.codes_per_image + 2:
        raise ValueError(f"mode 'image' needs max_new_tokens >= codes_per_image + 2 = {layout.codes_per_image + 2}")


def _left_pad_to(tokens: Array, width: int, pad_id: int) -> Array:
    extra = width - tokens.shape[1]
    return tokens if extra == 0 else jnp.concatenate([jnp.full((tokens.shape[0], extra), pad_id, tokens.dtype), tokens], 1)


# ---- sampling -----------------------------------------------------------------------------------


@flax.struct.dataclass
class _DecodeState:
    step: Array  # int32 scalar
    logits: Array  # [R, V] next-token logits of every cache row (R = B, or 2B with guidance)
    cache: KVCache
    done: Array  # [B] bool
    in_image: Array  # [B] bool
    codes_done: Array  # [B] int32
    tokens: Array  # [B, N]
    logprobs: Array  # [B, N]
    lengths: Array  # [B]


def _prefill(params, prompt_tokens, prompt_lengths, cache_len: int, config: LLMConfig):
    """Runs the prompts [R, P] through the decoder into a fresh cache of ``cache_len`` slots.

    Returns (last logits [R, V], cache, pad counts [R], last prompt position [R]).
    """
    R, P = prompt_tokens.shape
    positions, mask, pad = prompt_positions_and_mask(prompt_lengths, P, cache_len)
    cache = init_cache(config, R, cache_len, jnp.dtype(config.dtype))
    logits, cache = Decoder(config).apply({"params": params}, prompt_tokens, positions, attention_mask=mask, cache=cache,
                                          last_logits_only=True)
    return logits[:, -1], cache, pad, positions[:, -1]


@functools.partial(jax.jit, static_argnames=("config", "sampler", "layout", "guided"))
def _generate(params, prompt_tokens, prompt_lengths, rng, *, config: LLMConfig, sampler: Sampler,
              layout: VocabLayout, guided: bool) -> GenerationOutput:
    R, P = prompt_tokens.shape  # R = 2B with guidance (conditional rows first), else B
    B, N = (R // 2 if guided else R), sampler.max_new_tokens
    S = P + N
    logits, cache, pad, last_position = _prefill(params, prompt_tokens, prompt_lengths, S, config)

    init = _DecodeState(
        step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
        done=jnp.zeros((B,), bool), in_image=prompt_tokens[:B, -1] == layout.boi_id,
        codes_done=jnp.zeros((B,), jnp.int32), tokens=jnp.full((B, N), layout.pad_id, jnp.int32),
        logprobs=jnp.zeros((B, N), jnp.float32), lengths=jnp.zeros((B,), jnp.int32),
    )

    def cond(s: _DecodeState):
        return (s.step < N) & ~jnp.all(s.done)

    def body(s: _DecodeState):
        guided_logits = s.logits[:B]
        if guided:  # uncond + scale * (cond - uncond), written so that scale 1 gives cond exactly
            guided_logits = guided_logits + (sampler.guidance_scale - 1.0) * (guided_logits - s.logits[B:])
        allowed = _allowed_tokens(layout, sampler.mode, config.vocab_size, s.in_image, s.codes_done)
        constrained = jnp.where(allowed, guided_logits, MASKED_LOGIT)  # [B, V]
        if sampler.greedy:
            token = jnp.argmax(constrained, axis=-1)
        else:
            filtered = _truncate(constrained / sampler.temperature, sampler.top_k, sampler.top_p)
            token = _sample(filtered, jax.random.fold_in(rng, s.step))
        token = token.astype(jnp.int32)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(constrained, -1), token[:, None], -1)[:, 0]
        live = ~s.done
        token = jnp.where(live, token, layout.pad_id)
        is_code = (token >= layout.image_offset) & (token < layout.special_offset)
        in_image = jnp.where(token == layout.boi_id, True, jnp.where(token == layout.eoi_id, False, s.in_image))
        codes_done = jnp.where(token == layout.boi_id, 0, s.codes_done + is_code.astype(jnp.int32))
        if sampler.mode == "image":
            stop = token == layout.eoi_id
        else:
            stop = (token == layout.eos_id) & sampler.stop_at_eos
        # Feed the sampled token to every cache row (both guidance halves) for the next logits.
        feed = jnp.tile(token, R // B)[:, None]  # [R, 1]
        positions = (last_position + 1 + s.step)[:, None]  # [R, 1]
        mask = _step_mask(pad, s.cache.end_index, S)  # [R, 1, S]
        next_logits, cache = Decoder(config).apply({"params": params}, feed, positions, attention_mask=mask, cache=s.cache)
        return _DecodeState(
            step=s.step + 1, logits=next_logits[:, 0], cache=cache, done=s.done | (live & stop),
            in_image=in_image, codes_done=codes_done, tokens=s.tokens.at[:, s.step].set(token),
            logprobs=s.logprobs.at[:, s.step].set(jnp.where(live, logprob, 0.0)),
            lengths=s.lengths + live.astype(jnp.int32))

    final = jax.lax.while_loop(cond, body, init)
    return GenerationOutput(tokens=final.tokens, lengths=final.lengths, logprobs=final.logprobs)


def generate(params, config: LLMConfig, prompt_tokens, prompt_lengths, *, sampler: Sampler, rng: Array,
             layout: VocabLayout, uncond_prompt_tokens=None, uncond_prompt_lengths=None) -> GenerationOutput:
    """Samples continuations of left-padded prompts.

    Args:
      params: decoder parameters.
      config: the decoder's `LLMConfig`.
      prompt_tokens: [B, P] int32, left-padded with ``layout.pad_id``.
      prompt_lengths: [B] int32 real lengths (each >= 1).
      sampler: static decoding settings.
      rng: PRNG key (unused when greedy).
      layout: the extended vocabulary layout (constraints, stop and pad ids).
      uncond_prompt_tokens, uncond_prompt_lengths: [B, P'] / [B] unconditional prompts for
        classifier-free guidance (both or neither).

    Returns:
      `GenerationOutput` with tokens [B, N], lengths [B], logprobs [B, N].
    """
    _check(config, layout, sampler)
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if (uncond_prompt_tokens is None) != (uncond_prompt_lengths is None):
        raise ValueError("give both uncond_prompt_tokens and uncond_prompt_lengths, or neither")
    guided = uncond_prompt_tokens is not None
    if guided:
        uncond = jnp.asarray(uncond_prompt_tokens, jnp.int32)
        if uncond.shape[0] != prompt_tokens.shape[0]:
            raise ValueError(f"{uncond.shape[0]} unconditional prompts for {prompt_tokens.shape[0]} prompts")
        width = max(prompt_tokens.shape[1], uncond.shape[1])
        prompt_tokens = jnp.concatenate([_left_pad_to(prompt_tokens, width, layout.pad_id),
                                         _left_pad_to(uncond, width, layout.pad_id)], 0)
        prompt_lengths = jnp.concatenate([prompt_lengths, jnp.asarray(uncond_prompt_lengths, jnp.int32)], 0)
    return _generate(params, prompt_tokens, prompt_lengths, rng, config=config, sampler=sampler, layout=layout,
                     guided=guided)


# ---- beam search (reports) ----------------------------------------------------------------------


@flax.struct.dataclass
class _BeamState:
    step: Array
    logits: Array  # [B*W, V]
    cache: KVCache
    scores: Array  # [B, W] summed log-probs
    finished: Array  # [B, W]
    tokens: Array  # [B, W, N]
    lengths: Array  # [B, W]


@functools.partial(jax.jit, static_argnames=("config", "layout", "beam_width", "max_new_tokens", "length_penalty"))
def _beam_search(params, prompt_tokens, prompt_lengths, *, config: LLMConfig, layout: VocabLayout, beam_width: int,
                 max_new_tokens: int, length_penalty: float) -> BeamSearchOutput:
    B, P = prompt_tokens.shape
    W, N, V = beam_width, max_new_tokens, config.vocab_size
    S = P + N
    logits, cache, pad, last_position = _prefill(params, prompt_tokens, prompt_lengths, S, config)
    # Beams of row b live in cache rows b*W .. b*W + W-1; the prompt is prefilled once and copied.
    cache = KVCache(keys=jnp.repeat(cache.keys, W, axis=1), values=jnp.repeat(cache.values, W, axis=1),
                    end_index=cache.end_index)
    logits, pad, last_position = (jnp.repeat(x, W, axis=0) for x in (logits, pad, last_position))
    allowed = _allowed_tokens(layout, "text", V, jnp.zeros((1,), bool), jnp.zeros((1,), jnp.int32))  # [1, V]
    pad_only = jnp.where(jnp.arange(V) == layout.pad_id, 0.0, MASKED_LOGIT)  # a finished beam can only extend by <pad>
    init = _BeamState(
        step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
        # all beams start equal: only beam 0 may expand at the first step, so the W kept are distinct
        scores=jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, MASKED_LOGIT), (B, 1)),
        finished=jnp.zeros((B, W), bool), tokens=jnp.full((B, W, N), layout.pad_id, jnp.int32),
        lengths=jnp.zeros((B, W), jnp.int32),
    )

    def cond(s: _BeamState):
        return (s.step < N) & ~jnp.all(s.finished)

    def body(s: _BeamState):
        logp = jax.nn.log_softmax(jnp.where(allowed, s.logits, MASKED_LOGIT), axis=-1).reshape(B, W, V)
        logp = jnp.where(s.finished[:, :, None], pad_only, logp)
        candidates = (s.scores[:, :, None] + logp).reshape(B, W * V)
        scores, flat = jax.lax.top_k(candidates, W)  # [B, W]
        parent, token = flat // V, (flat % V).astype(jnp.int32)
        parent_finished = jnp.take_along_axis(s.finished, parent, 1)
        tokens = jnp.take_along_axis(s.tokens, parent[:, :, None], 1).at[:, :, s.step].set(token)
        lengths = jnp.take_along_axis(s.lengths, parent, 1) + (~parent_finished).astype(jnp.int32)
        finished = parent_finished | (token == layout.eos_id)
        rows = (jnp.arange(B)[:, None] * W + parent).reshape(-1)  # cache row of each kept beam's parent
        cache = KVCache(keys=s.cache.keys[:, rows], values=s.cache.values[:, rows], end_index=s.cache.end_index)
        positions = (last_position + 1 + s.step)[:, None]
        mask = _step_mask(pad, cache.end_index, S)
        next_logits, cache = Decoder(config).apply(
            {"params": params}, token.reshape(-1, 1), positions, attention_mask=mask, cache=cache)
        return _BeamState(step=s.step + 1, logits=next_logits[:, 0], cache=cache, scores=scores, finished=finished,
                          tokens=tokens, lengths=lengths)

    final = jax.lax.while_loop(cond, body, init)
    normalised = final.scores / jnp.maximum(final.lengths, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(normalised, axis=1)  # [B]
    pick = lambda x: jnp.take_along_axis(x, best.reshape((B, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]  # noqa: E731
    return BeamSearchOutput(tokens=pick(final.tokens), lengths=pick(final.lengths), scores=pick(normalised))


def beam_search(params, config: LLMConfig, prompt_tokens, prompt_lengths, *, layout: VocabLayout, beam_width: int,
                max_new_tokens: int, length_penalty: float = 0.0) -> BeamSearchOutput:
    """Beam search for text (reports): the best of ``beam_width`` beams per left-padded prompt.

    Text constraints as mode "text" of `Sampler`. A beam ends at eos; the final ranking divides
    each beam's summed log-prob by length**length_penalty (0: plain sum).
    """
    _check(config, layout)
    if beam_width < 1 or beam_width > config.vocab_size:
        raise ValueError(f"beam_width={beam_width} must be in [1, vocab_size]")
    return _beam_search(params, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32),
                        config=config, layout=layout, beam_width=beam_width, max_new_tokens=max_new_tokens,
                        length_penalty=float(length_penalty))


# ---- scoring ------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("config",))
def score_continuations(params, config: LLMConfig, prompt_tokens, prompt_lengths, continuation_tokens,
                        continuation_lengths) -> tuple[Array, Array]:
    """log P(continuation | prompt) in one forward pass (no constraints: the model's own distribution).

    Args:
      prompt_tokens: [B, P] left-padded; prompt_lengths: [B].
      continuation_tokens: [B, C] right-padded; continuation_lengths: [B].

    Returns:
      (total log-prob [B], per-token log-probs [B, C], 0 beyond each continuation's length).
    """
    B, P = prompt_tokens.shape
    C = continuation_tokens.shape[1]
    tokens = jnp.concatenate([prompt_tokens, continuation_tokens], axis=1).astype(jnp.int32)  # [B, P + C]
    positions, mask, _ = prompt_positions_and_mask(jnp.asarray(prompt_lengths) + C, P + C, P + C)
    logits, _ = Decoder(config).apply({"params": params}, tokens, positions, attention_mask=mask)
    logp = jax.nn.log_softmax(logits[:, P - 1:P + C - 1], axis=-1)  # predictions of the continuation [B, C, V]
    per_token = jnp.take_along_axis(logp, continuation_tokens[..., None].astype(jnp.int32), -1)[..., 0]
    per_token = jnp.where(jnp.arange(C)[None, :] < jnp.asarray(continuation_lengths)[:, None], per_token, 0.0)
    return per_token.sum(-1), per_token

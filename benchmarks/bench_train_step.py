"""Prints the speed of the stage-1 train step (Eq. 12) on this machine, and what L_recon costs.

  python benchmarks/bench_train_step.py [--model=cpu] [--batch_size=8] [--steps=10] [--tokenizer=DIR] [--text=DIR]

Builds Stage 1 from its runlocal config (a random LLM of the named size; the VQ-GAN of
``--tokenizer`` or a random one of the runlocal shape; a BPE vocabulary trained on synthetic
reports unless ``--text`` names a text-pretraining workdir), then times the jitted step with
lambda_recon = 0 and > 0 (lambda_reg as configured). Tokens/s counts every position of every
sequence (two sequences per image-report pair).
"""

from __future__ import annotations

import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import stage1 as stage1_config
from mavilt_jax.data import phantoms
from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, train_bpe
from mavilt_jax.stages import multimodal
from mavilt_jax.stages.text_pretrain import synthetic_report_texts

_MODEL = flags.DEFINE_string("model", "cpu", "LLM size (configs/common.py).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Image-report pairs per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one compile step).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "VQ-GAN workdir (default: random runlocal VQ-GAN).")
_TEXT = flags.DEFINE_string("text", "", "Text-pretraining workdir (default: BPE on synthetic reports).")


def _stage(recon: float, text_dir: str, workdir: str) -> multimodal.Stage1:
    config = stage1_config.get_config(f"runlocal,model={_MODEL.value},text={text_dir},recon={recon}")
    config.tokenizer_checkpoint = _TOKENIZER.value
    config.batch_size = _BATCH.value
    stage = multimodal.Stage1(config)
    stage.setup(workdir)
    return stage


def _time(stage: multimodal.Stage1, batch) -> tuple[float, float]:
    state = nn.unbox(jax.jit(stage.init_state)(jax.random.key(0)))
    step = jax.jit(stage.train_step, donate_argnums=(0,))
    t0 = time.perf_counter()
    state, m = step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(_STEPS.value):
        state, m = step(state, batch, jax.random.key(i))
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / _STEPS.value, compile_s


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = _TEXT.value
        if not text_dir:
            text_dir = tmp + "/text"
            tok = train_bpe(synthetic_report_texts(1500, 0), 512)
            ExtendedVocab(tok, codebook_size=0, codes_per_image=0, eos_token=BPE_EOS).save(text_dir + "/vocab")
        results = {}
        for recon in (0.0, 0.1):
            stage = _stage(recon, text_dir, f"{tmp}/run_{recon}")
            rng = np.random.default_rng(0)
            size = stage.vq_config.image_size
            examples = []
            for i in range(_BATCH.value):
                study = phantoms.generate_study(0, i, resolution=size)
                study["image"] = study["image"][..., None]
                examples.append(stage.preprocess(study, rng))
            batch = {k: jnp.stack([e[k] for e in examples]) for k in examples[0]}
            results[recon] = _time(stage, batch)
        B, L = _BATCH.value, stage.config.sequence.max_len
        tokens = 2 * B * L
        print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model={_MODEL.value} "
              f"({sum(x.size for x in jax.tree.leaves(jax.eval_shape(stage.init_params, jax.random.key(0)))) / 1e6:.2f}M params, "
              f"vocab {stage.layout.size}); batch {B} pairs = {2 * B} sequences x {L} tokens; "
              f"VQ-GAN {stage.vq_config.image_size}px, {stage.layout.codes_per_image} codes")
        for recon, (sec, compile_s) in results.items():
            print(f"lambda_recon={recon}: {sec * 1e3:.1f} ms/step, {tokens / sec:,.0f} tokens/s (compile {compile_s:.1f} s)")
        extra = results[0.1][0] - results[0.0][0]
        print(f"L_recon cost: {extra * 1e3:+.1f} ms/step ({100 * extra / results[0.0][0]:+.0f} %)")


if __name__ == "__main__":
    app.run(main)

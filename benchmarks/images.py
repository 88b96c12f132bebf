"""VQ-GAN encode / decode images/s, pre-tokenization images/s, and the stage-1 step with and without L_recon.

VQ-GAN: the full-size tokenizer of ``configs/vqgan.py`` (random weights; speed does not depend on
them) at 128 and 256 px, batch 8, jitted encode (image -> codes) and decode (codes -> image).
Pre-tokenization: the pretokenized builder's `BatchEncoder` (uint8 images -> model range on the
host -> jitted encoder in fixed-size batches) with the demo pipeline's 64 px runlocal VQ-GAN.
Stage 1: the demo pipeline's runlocal stage-1 step (model "cpu", 8 image-report pairs = 16
sequences of 224 tokens, a random 64 px VQ-GAN, BPE vocabulary trained on synthetic reports),
jitted with the state donated, lambda_recon = 0 vs 0.1 (lambda_grad as configured; no phi): with
the codes and L_recon targets precomputed as the training loop feeds them, and encoded and decoded
in the step (a split over ``data.precompute_codes_gib``).
"""

from __future__ import annotations

import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import Row, median_seconds
from configs import stage1 as stage1_config
from configs import vqgan as vqgan_config
from mavilt_jax.models import vqgan

VQ_BATCH = 8


def vqgan_rows(repeats: int, sizes=(128, 256)) -> list[Row]:
    rows = []
    for res in sizes:
        cfg = vqgan.vqgan_config(vqgan_config.config(res=res).model)
        model = vqgan.VQGAN(cfg)
        images = jax.random.uniform(jax.random.key(0), (VQ_BATCH, res, res, 1), minval=-1.0, maxval=1.0)
        params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
        encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
        decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method="decode"))
        codes = encode(params, images)
        secs = median_seconds({"encode": lambda: encode(params, images), "decode": lambda: decode(params, codes)},
                              repeats)
        for what, sec in secs.items():
            rows.append(Row("vqgan", f"{what} {res}px ({cfg.codes_per_image} codes, batch {VQ_BATCH})",
                            VQ_BATCH / sec, "img/s", {"ms_per_batch": 1e3 * sec}))
    return rows


def pretokenize_rows(repeats: int, n: int = 64) -> list[Row]:
    from tfds_builders.pretokenized.pretokenized_dataset_builder import BatchEncoder

    cfg = vqgan.vqgan_config(vqgan_config.config(runlocal=True).model)

    class RandomEncoder(BatchEncoder):  # BatchEncoder's call path, random weights instead of a workdir
        def __init__(self, batch_size: int):
            model = vqgan.VQGAN(cfg)
            self.config, self.batch_size = cfg, batch_size
            self.params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 1)))["params"]
            self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
            self._to_model_range = vqgan.to_model_range

    encoder = RandomEncoder(32)
    images = np.random.default_rng(0).integers(0, 256, (n, cfg.image_size, cfg.image_size, 1), dtype=np.uint8)
    sec = median_seconds({"pretokenize": lambda: encoder(images)}, repeats)["pretokenize"]
    return [Row("vqgan", f"pre-tokenization {cfg.image_size}px runlocal VQ-GAN (host + encoder, batch 32)", n / sec,
                "img/s")]


def _stage1(recon: float, text_dir: str, workdir: str):
    from mavilt_jax.stages import multimodal

    config = stage1_config.config(runlocal=True, model="cpu", text=text_dir, recon=recon, **{"vqgan.allow_random": True})
    stage = multimodal.Stage1(config)
    stage.setup(workdir)
    return stage


def _stage1_call(stage, precomputed: bool):
    """The jitted step on 8 phantom studies; ``precomputed``: their codes and L_recon targets
    computed before the step (`Stage1.precompute_codes`, with the state's random VQ-GAN), as the
    training loop feeds them, else the images (encoded, and the targets decoded, in the step)."""
    from mavilt_jax.data import phantoms

    rng = np.random.default_rng(0)
    size = stage.vq_config.image_size
    state = [nn.unbox(jax.jit(stage.init_state)(jax.random.key(0)))]
    studies = []
    for i in range(stage.config.batch_size):
        study = phantoms.generate_study(0, i, resolution=size)
        study["image"] = study["image"][..., None]
        studies.append(study)
    if precomputed:
        studies = stage.precompute_codes(studies, state[0].frozen["vqgan"])
    examples = [stage.preprocess(studies[i], rng) for i in range(len(studies))]
    batch = {k: jnp.stack([e[k] for e in examples]) for k in examples[0]}
    step = jax.jit(stage.train_step, donate_argnums=(0,))

    def call():
        state[0], m = step(state[0], batch, jax.random.key(0))
        return m["loss"]

    return call


def stage1_rows(repeats: int) -> list[Row]:
    from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, train_bpe
    from mavilt_jax.stages.text_pretrain import synthetic_report_texts

    with tempfile.TemporaryDirectory() as tmp:
        text_dir = tmp + "/text"
        tok = train_bpe(synthetic_report_texts(1500, 0), 512)
        ExtendedVocab(tok, codebook_size=0, codes_per_image=0, eos_token=BPE_EOS).save(text_dir + "/vocab")
        stages = {recon: _stage1(recon, text_dir, f"{tmp}/run_{recon}") for recon in (0.0, 0.1)}
        calls = {}
        for recon, stage in stages.items():
            for precomputed in (True, False):
                calls[f"lambda_recon={recon}{'' if precomputed else ', encoded in the step'}"] = _stage1_call(
                    stage, precomputed)
        secs = median_seconds(calls, repeats)
    stage = stages[0.0]
    tokens = 2 * stage.config.batch_size * stage.config.sequence.max_len
    rows = []
    for name, sec in secs.items():
        extra = {"ms_per_step": 1e3 * sec}
        if name.startswith("lambda_recon=0.1"):  # against lambda_recon 0 with the codes from the same place
            extra["L_recon_cost"] = sec / secs[name.replace("0.1", "0.0")] - 1.0
        rows.append(Row("stage1", f"runlocal step, {name}", tokens / sec, "tok/s", extra))
    return rows

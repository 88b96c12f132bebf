"""The whole pipeline at CPU size, in sequence, in subfolders of the workdir:

  cxr_encoder -> tokenizer -> text_pretrain -> stage1 -> stage2

  python -m mavilt_jax.main --config=configs/demo.py --workdir=/tmp/mavilt/demo

Each step resumes (or skips, when finished) what an earlier call left in its subfolder, so the
command can be rerun after an interruption. ``{workdir}`` in a path is the demo's workdir.
Variants: ``steps=N`` (steps of every step, for a smoke run); ``model=tiny|cpu``.
"""

from __future__ import annotations

import ml_collections

from configs import common, cxr_encoder, stage1, stage2, text_pretrain, tokenizer


def config(*, steps: int | None = None, model: str = "cpu") -> ml_collections.ConfigDict:
    """The pipeline; ``steps`` (when given) replaces every step's ``total_steps``."""
    root = "{workdir}"
    pipeline = ml_collections.ConfigDict()
    pipeline.cxr_encoder = cxr_encoder.config(runlocal=True, steps=steps)
    pipeline.tokenizer = tokenizer.config(runlocal=True, phi=f"{root}/cxr_encoder", steps=steps)
    pipeline.text_pretrain = text_pretrain.config(runlocal=True, model=model, steps=steps)
    pipeline.stage1 = stage1.config(runlocal=True, model=model, text=f"{root}/text_pretrain",
                                    tokenizer=f"{root}/tokenizer", phi=f"{root}/cxr_encoder", steps=steps)
    pipeline.stage2 = stage2.config(runlocal=True, model=model, stage1=f"{root}/stage1", tokenizer=f"{root}/tokenizer",
                                    phi=f"{root}/cxr_encoder", steps=steps)
    config = ml_collections.ConfigDict()
    config.stage = "pipeline"
    config.pipeline = pipeline
    config.order = ("cxr_encoder", "tokenizer", "text_pretrain", "stage1", "stage2")
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, steps=0, model="cpu")
    steps = f",steps={arg.steps}" if arg.steps else ""
    root = "{workdir}"
    pipeline = ml_collections.ConfigDict()
    pipeline.cxr_encoder = cxr_encoder.get_config("runlocal" + steps)
    pipeline.tokenizer = tokenizer.get_config(f"runlocal,phi={root}/cxr_encoder" + steps)
    pipeline.text_pretrain = text_pretrain.get_config(f"runlocal,model={arg.model}" + steps)
    pipeline.stage1 = stage1.get_config(
        f"runlocal,model={arg.model},text={root}/text_pretrain,tokenizer={root}/tokenizer,phi={root}/cxr_encoder" + steps)
    pipeline.stage2 = stage2.get_config(
        f"runlocal,model={arg.model},stage1={root}/stage1,tokenizer={root}/tokenizer,phi={root}/cxr_encoder" + steps)
    config = ml_collections.ConfigDict()
    config.stage = "pipeline"
    config.pipeline = pipeline
    config.order = ("cxr_encoder", "tokenizer", "text_pretrain", "stage1", "stage2")
    return config

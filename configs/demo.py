"""The main job: the whole method at CPU size, trained AND evaluated, in subfolders of the workdir:

  cxr_encoder -> judge -> vqgan -> vqgan_decoder -> text_pretrain -> stage1 -> stage2 -> evaluation

  python -m mavilt_jax.main --config=configs/demo.py --workdir=/tmp/mavilt

- cxr_encoder: phi, the CXR encoder of Eq. 4's feature term (guides the tokenizer);
- judge: a second classifier, trained separately (plain CNN, other seed), used ONLY to judge
  generated images (phi guided the tokenizer, so it cannot judge);
- vqgan (the image tokenizer), text_pretrain, stage1, stage2: the method;
- vqgan_decoder: the tokenizer's decoder tuned again with its codes fixed (encoder and codebook
  frozen), without the feature term: Eq. 4's feature term with a well-trained phi makes the codes
  carry the findings but pulls the drawing away from the radiographs' look; this step restores
  the look (reconstruction FD) without touching what the codes carry;
- evaluation: the final model on the held-out test split (seeds never seen in training, all 200
  studies) beside a constant-report control, a shuffled-image control and the ceilings
  (`mavilt_jax/evaluation/pipeline_eval.py`); writes results.json, report_card.md,
  image_grid.png and sample_reports.md into the workdir.

Each step resumes (or skips, when finished) what an earlier call left in its subfolder, so the
command can be rerun after an interruption. ``{workdir}`` in a path is the demo's workdir.
Variants: ``steps=N`` (every training step's length, for a smoke run); ``model=tiny|cpu``;
``long`` (the longer variant: stage 2 twice as long); ``eval_studies=N`` (evaluate the
first N test studies only; 0: all); ``fast_eval`` (no METEOR, Inception, probe or sweep);
``smoke`` (everything at the smallest size: the CI test of the main job).
"""

from __future__ import annotations

import ml_collections

from configs import common, cxr_encoder, stage1, stage2, text_pretrain, vqgan

# The bars of the method on the synthetic test split (checked and shown in the report card).
BARS = {"ce_f1_micro": 0.80, "vqa_accuracy": 0.90, "vqa_auroc": 0.95, "judge_auroc": 0.90}

# Steps of each training step: (default, long).
STEPS = {"cxr_encoder": (3000, 3000), "judge": (3000, 3000), "vqgan": (500, 500), "vqgan_decoder": (300, 300),
         "text_pretrain": (300, 300), "stage1": (1000, 1000), "stage2": (4000, 8000)}


def evaluation_config(*, model_step: str = "stage2", max_studies: int = 0,
                      fast: bool = False) -> ml_collections.ConfigDict:
    """The evaluation step (`mavilt_jax.evaluation.pipeline_eval`) of the pipeline.

    ``guidance_scale``: report -> image's classifier-free guidance; 0 chooses it on the validation
    split (the first ``guidance_select_studies``) among ``guidance_sweep``'s scales by the judge's
    macro AUROC. ``fast`` has no sweep to choose from: a fixed 3.0."""
    return ml_collections.ConfigDict(dict(
        stage="evaluation", model_step=model_step, judge="{workdir}/judge", split="test", max_studies=max_studies,
        guidance_scale=3.0 if fast else 0.0, guidance_select_studies=200,
        guidance_sweep=() if fast else (1.0, 2.0, 3.0, 5.0), max_report_tokens=128,
        batch_size=32, seed=0, resamples=200 if fast else 1000, nlg_resamples=10 if fast else 100,
        fid_resamples=10 if fast else 50, meteor=not fast,
        fid_extractors=("judge",) if fast else ("inception", "judge"), probe=not fast, sample_reports=8,
        bars=dict(BARS), disable_most_optimizations=False))


def smoke_settings(pipeline: ml_collections.ConfigDict) -> None:
    """What a smoke run of ``pipeline`` (its steps by name) changes besides sizes: XLA's
    optimisations off (compiling is most of a 3-step run) and checkpoints saved synchronously."""
    for step in pipeline.values():
        step.disable_most_optimizations = True
        if "checkpoint" in step:
            step.checkpoint.async_save = False


def config(*, steps: int | None = None, model: str = "cpu", long: bool = False, eval_studies: int = 0,
           fast_eval: bool = False, smoke: bool = False) -> ml_collections.ConfigDict:
    """The pipeline; ``steps`` (when given) replaces every training step's ``total_steps``.

    ``smoke``: the whole main job wired as in production, at the smallest sizes (3 steps each, the
    tiny LLM, XLA optimisations off for fast compiles, evaluation of 8 test studies without
    METEOR, Inception, probe or sweep): what CI runs."""
    if smoke:
        steps, model, fast_eval, eval_studies = steps or 3, "tiny", True, eval_studies or 8
    root = "{workdir}"
    n = {k: steps if steps is not None else v[int(long)] for k, v in STEPS.items()}
    pipeline = ml_collections.ConfigDict()
    pipeline.cxr_encoder = cxr_encoder.config(runlocal=True, steps=n["cxr_encoder"])
    pipeline.judge = cxr_encoder.config(runlocal=True, independent=True, steps=n["judge"])
    pipeline.vqgan = vqgan.config(runlocal=True, phi=f"{root}/cxr_encoder", steps=n["vqgan"])
    pipeline.vqgan_decoder = vqgan.config(runlocal=True, decoder_of=f"{root}/vqgan", steps=n["vqgan_decoder"])
    pipeline.text_pretrain = text_pretrain.config(runlocal=True, model=model, steps=n["text_pretrain"])
    pipeline.stage1 = stage1.config(runlocal=True, model=model, text=f"{root}/text_pretrain",
                                    tokenizer=f"{root}/vqgan_decoder", phi=f"{root}/cxr_encoder", steps=n["stage1"])
    pipeline.stage2 = stage2.config(runlocal=True, model=model, stage1=f"{root}/stage1", tokenizer=f"{root}/vqgan_decoder",
                                    phi=f"{root}/cxr_encoder", steps=n["stage2"])
    pipeline.evaluation = evaluation_config(max_studies=eval_studies, fast=fast_eval)
    # Stages 1-2 read 20,000 training studies (r64_large, r64's validation and test studies): the
    # drawing generalises better (stage-2 validation image CE 1.068 against 1.134 on r64's 2,000),
    # and the evaluation's linear reader of the codes, fitted on the training split, needs them to
    # show what the codes carry (CE F1 0.754 against 0.691 when fitted on 2,000).
    # The reading curve (image_gain at every evaluation) needs ~100 validation studies to rise
    # above its noise; the stage configs' runlocal default (2 batches, 16 studies) does not.
    for name in ("stage1", "stage2"):
        if not smoke:
            pipeline[name].data.builder_config = "r64_large"
        pipeline[name].eval_max_batches = 2 if smoke else 16
    if smoke:
        smoke_settings(pipeline)
        # The guidance scale chosen on validation studies, as the full evaluation does (two scales).
        pipeline.evaluation.update(guidance_scale=0.0, guidance_sweep=(1.0, 3.0), guidance_select_studies=eval_studies)
    config = ml_collections.ConfigDict()
    config.stage = "pipeline"
    config.pipeline = pipeline
    config.order = ("cxr_encoder", "judge", "vqgan", "vqgan_decoder", "text_pretrain", "stage1", "stage2",
                    "evaluation")
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

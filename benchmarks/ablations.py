"""The ablations of the paper's Table IV, each beside the full method, in one table.

  python -m benchmarks.ablations --base=/tmp/mavilt --out=/tmp/mavilt_ablations

``--base`` is a finished main job (``python -m mavilt_jax.main --config=configs/demo.py``): its
phi, judge, VQ-GAN, text-pretrained LLM and stage-1 model are reused wherever an ablation does
not change them, and its evaluation is the "full method" row. Each ablation is the main job's
pipeline with one config switch, run in ``--out/<name>`` and evaluated by the same evaluation
step (same test split, judge, controls):

  no_clinical_loss      VQ-GAN without Eq. 4's gradient and feature terms (``clinical=False``; its
                        decoder tuning too), then stage 1, stage 2 on its codes
  fixed_instructions    stage 2 with one fixed instruction per task (``sequence.fixed_instructions``)
  no_stage1             stage 2 straight from the text-pretrained LLM (no multimodal stage 1)
  no_recon              stage 1 and 2 without L_recon (``recon=0``)
  no_anchor             stage 1 and 2 without the weight anchor of Eq. 11 (``reg=0``)

``--only a,b`` runs a subset; ``--full_eval`` adds the figures the table does not show (METEOR,
Inception FD, code probe, guidance sweep); ``--steps N`` shortens every training step (a smoke run, not a
result); ``--smoke`` runs the main job's smoke variant (over a ``configs/demo.py:smoke`` base).
A finished ablation is skipped on a rerun (the pipeline resumes), so the command can be
continued after an interruption. Prints the table and writes ``--out/ablations.json`` and
``--out/ablations.md``.
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys

import ml_collections

from mavilt_jax import cli

ABLATIONS = ("no_clinical_loss", "fixed_instructions", "no_stage1", "no_recon", "no_anchor")


def ablation_config(name: str, base: str, steps: int | None = None, model: str = "cpu",
                    long: bool = False, smoke: bool = False, full_eval: bool = False) -> ml_collections.ConfigDict:
    """The main job's pipeline with ablation ``name``; steps it shares with the full method point at ``base``.
    ``smoke``: as the main job's smoke variant (3 steps, the tiny LLM, 8 test studies, fast evaluation,
    `demo.smoke_settings`).
    The evaluation is the main job's on all test studies, without the figures the table does not show
    (METEOR, Inception FD, code probe, guidance sweep) unless ``full_eval``."""
    from configs import demo, stage1, stage2, vqgan

    if smoke:
        steps, model = steps or 3, "tiny"

    full = demo.config(steps=steps, model=model, long=long)
    p = full.pipeline
    s1_steps, s2_steps = p.stage1.total_steps, p.stage2.total_steps
    common = dict(runlocal=True, model=model, phi=f"{base}/cxr_encoder")
    tok, text = f"{base}/vqgan_decoder", f"{base}/text_pretrain"
    pipeline = ml_collections.ConfigDict()
    if name == "no_clinical_loss":
        pipeline.vqgan = vqgan.config(runlocal=True, clinical=False, steps=p.vqgan.total_steps)
        # The same decoder-tuning steps as the full method, with the same (non-clinical) loss.
        pipeline.vqgan_decoder = vqgan.config(runlocal=True, clinical=False, decoder_of="{workdir}/vqgan",
                                              steps=p.vqgan_decoder.total_steps)
        tok = "{workdir}/vqgan_decoder"
    if name in ("no_clinical_loss", "no_recon", "no_anchor"):
        switches = {"no_recon": dict(recon=0.0), "no_anchor": dict(reg=0.0)}.get(name, {})
        pipeline.stage1 = stage1.config(text=text, tokenizer=tok, steps=s1_steps, **common, **switches)
        pipeline.stage2 = stage2.config(stage1="{workdir}/stage1", tokenizer=tok, steps=s2_steps, **common, **switches)
    elif name == "fixed_instructions":
        pipeline.stage2 = stage2.config(stage1=f"{base}/stage1", tokenizer=tok, steps=s2_steps, **common,
                                        **{"sequence.fixed_instructions": True})
    elif name == "no_stage1":
        # Stage 2 initialised the way stage 1 is: from the text-pretrained LLM, its vocabulary extended.
        pipeline.stage2 = stage2.config(stage1="", tokenizer=tok, steps=s2_steps, **common,
                                        **{"text_checkpoint": text})
    else:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    # The arms read the full method's training studies and validate as it does (configs/demo.py).
    for stage in ("stage1", "stage2"):
        if stage in pipeline:
            pipeline[stage].data = copy.deepcopy(p[stage].data)
            pipeline[stage].eval_max_batches = p[stage].eval_max_batches
    pipeline.evaluation = demo.evaluation_config(max_studies=8 if smoke else 0, fast=smoke or not full_eval)
    pipeline.evaluation.judge = f"{base}/judge"
    if smoke:
        demo.smoke_settings(pipeline)
    config = ml_collections.ConfigDict()
    config.stage = "pipeline"
    config.pipeline = pipeline
    # ConfigDict keys come back sorted: the pipeline order is spelled out.
    config.order = tuple(k for k in ("vqgan", "vqgan_decoder", "stage1", "stage2", "evaluation") if k in pipeline)
    return config


def summary_row(results: dict) -> dict[str, float | None]:
    from mavilt_jax.evaluation import pipeline_eval

    row = {}
    for key, _, path in pipeline_eval.SUMMARY_COLUMNS:
        est = pipeline_eval.summary_value(results.get("model"), path)
        row[key] = None if est is None else est.get("value")
    return row


def render(rows: dict[str, dict]) -> str:
    from mavilt_jax.evaluation import pipeline_eval

    labels = [label for _, label, _ in pipeline_eval.SUMMARY_COLUMNS]
    lines = ["| Variant | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for name, row in rows.items():
        cells = ["–" if v is None or v != v else f"{v:.3f}" for v in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a finished main job's workdir (the full method)")
    parser.add_argument("--out", required=True, help="folder of the ablation runs")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ABLATIONS)}")
    parser.add_argument("--steps", type=int, default=None, help="every training step's length (smoke runs)")
    parser.add_argument("--model", default="cpu", help="LLM size, as the main job's model= variant")
    parser.add_argument("--long", action="store_true", help="the main job's long variant")
    parser.add_argument("--smoke", action="store_true", help="the main job's smoke variant (tiny, 3 steps, 8 studies)")
    parser.add_argument("--full_eval", action="store_true",
                        help="also METEOR, Inception FD, the code probe and the guidance sweep of every ablation")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ABLATIONS)
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        parser.error(f"unknown ablation(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    base = pathlib.Path(args.base).resolve()
    if not (base / "results.json").is_file():
        parser.error(f"{base} holds no results.json: run the main job there first "
                     f"(python -m mavilt_jax.main --config=configs/demo.py --workdir={base})")

    from mavilt_jax import progress, train

    rows = {"full method": summary_row(json.loads((base / "results.json").read_text()))}
    out = pathlib.Path(args.out).resolve()
    for name in names:
        workdir = out / name
        with progress.context(f"[ablation {name}]"):
            train.run_pipeline(ablation_config(name, str(base), args.steps, args.model, args.long, args.smoke,
                                               args.full_eval), str(workdir))
        rows[name] = summary_row(json.loads((workdir / "results.json").read_text()))
    table = render(rows)
    (out / "ablations.json").write_text(json.dumps(rows, indent=2))
    (out / "ablations.md").write_text("# Table IV ablations (held-out test split, model rows)\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

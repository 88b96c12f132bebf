"""The main job's last step: the final model on the held-out test split, beside controls and ceilings.

A quality figure proves nothing alone, so every figure of the model comes with the same figure for:

- ``control_constant_report``: no image read at all: the most common training report for every
  study, and for VQA the most common training answer to the same question (P(yes) its training
  frequency);
- ``control_shuffled_image``: the model itself, given the radiograph of ANOTHER test study (a
  seeded derangement); report -> image is judged against the requests of another study's report;
- ``ceiling_judge_real``: the independent judge (a classifier trained separately from phi, which
  guided the tokenizer's loss and so cannot judge) on the REAL test images: what the pixels carry;
- ``ceiling_reconstruction``: the judge on the VQ-GAN reconstructions of the test images and their
  Frechet distances to the real ones: the best a generator over these codes can do (the floor of FD);
- ``ceiling_code_probe``: a linear probe from the VQ-GAN codes to the 14 labels
  (`mavilt_jax.evaluation.probe`): what the tokenizer lets the LLM see;
- ``ceiling_code_reader``: the same in the bars' figures: CE F1 of the labels, and VQA accuracy
  and yes/no AUROC of the answers, that linear regressions on the codes give (fitted on the
  training split): whether a bar is within what the codes carry;
- ``guidance_selection``: with ``guidance_scale`` 0, the classifier-free guidance scale of the
  model's report -> image is chosen on the VALIDATION split (its first ``guidance_select_studies``
  studies): the scale of ``guidance_sweep`` with the judge's highest macro AUROC there, so no test
  figure picks it;
- ``guidance_sweep``: report -> image at several classifier-free guidance scales (on test: the
  trade-off, not the choice);
- ``model_training_wording`` (stage 2, diagnostic): the model's reports and VQA with the first
  TRAINING wording of each instruction instead of the held-out one, which separates reading the
  image from generalising to an unseen wording.

Written to ``out_dir``: ``results.json`` (all of the above, every figure with its bootstrap 95 %
CI), ``report_card.md`` (summary with the bars, then Tables I-III of the model),
``image_grid.png`` (real vs generated), ``sample_reports.md`` and ``predictions/`` (records and
images, re-scorable with ``python -m mavilt_jax.evaluate --predictions``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from mavilt_jax.evaluation import records as records_lib

# Processes fitting the code probe's and the code reader's regressions (fitted on the whole
# training split, they were a third of the demo's evaluation on one core; the rest of the
# evaluation waits for them).
PROBE_JOBS = min(os.cpu_count() or 1, 8)

# The figures of the summary table: (row key in results, label, path into a task's results).
SUMMARY_COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ce_f1_micro", "CE micro-F1 (14)", ("report_generation", "clinical_efficacy", "f1_micro")),
    ("bleu4", "BLEU-4", ("report_generation", "nlg", "BLEU-4")),
    ("rouge_l", "ROUGE-L", ("report_generation", "nlg", "ROUGE-L")),
    ("vqa_accuracy", "VQA accuracy", ("vqa", "metrics", "accuracy")),
    ("vqa_auroc", "VQA yes/no AUROC", ("vqa", "metrics", "auroc_yes_no")),
    ("judge_auroc", "Judge AUROC (macro)", ("report_to_image", "conditional", "metrics", "auroc_macro")),
    ("fd_inception", "FD (Inception)", ("report_to_image", "fid", "inception")),
    ("fd_judge", "FD (judge)", ("report_to_image", "fid", "judge")),
)


def progress(message: str) -> None:
    """One line on the terminal (the main job's progress display) and in the log."""
    from mavilt_jax import progress as progress_lib

    progress_lib.show(message)


def _get(tree: Mapping, path: Sequence[str]) -> Mapping | None:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree if isinstance(tree, Mapping) else None


def memoized(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` over image batches, computed once per distinct batch (keyed by its bytes)."""
    cache: dict[str, np.ndarray] = {}

    def wrapped(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images)
        key = hashlib.sha1(images.tobytes() + str(images.shape).encode()).hexdigest()
        if key not in cache:
            cache[key] = np.asarray(fn(images))
        return cache[key]

    return wrapped


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2): Sattolo's algorithm, which
    draws a uniformly random n-cycle, so no study keeps its own image."""
    if n < 2:
        raise ValueError("a shuffled-image control needs at least 2 studies")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never the element itself
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def constant_report(train_reports: Sequence[str]) -> str:
    """The most common training report (ties: the first seen)."""
    if not train_reports:
        raise ValueError("no training reports")
    return collections.Counter(train_reports).most_common(1)[0][0]


def majority_answers(train_pairs: Sequence[Mapping[str, str]]) -> tuple[dict[str, str], dict[str, float], str]:
    """From training VQA pairs: (most common answer per question, P(yes) per question, the overall
    most common answer for unseen questions)."""
    from mavilt_jax.evaluation.vqa_metrics import normalize_answer

    by_question: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for pair in train_pairs:
        by_question[pair["question"]][normalize_answer(pair["answer"])] += 1
    answers = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
    p_yes = {q: (c["yes"] / max(c["yes"] + c["no"], 1)) for q, c in by_question.items()}
    overall = collections.Counter(normalize_answer(p["answer"]) for p in train_pairs).most_common(1)[0][0]
    return answers, p_yes, overall


def _score(records: list[dict], base_dir: pathlib.Path, cfg, scorers: Mapping, out_dir: pathlib.Path | None = None,
           extractors: tuple[str, ...] | None = None) -> dict:
    from mavilt_jax.evaluation import suite

    if extractors is not None:
        cfg = dataclasses.replace(cfg, fid_extractors=extractors)
    return suite.score_records(records_lib.group_records(records, base_dir), cfg, out_dir=out_dir, **scorers)


def _image_records(ids: Sequence[str], reports: Sequence[str], real_paths: Sequence[str],
                   shown: Sequence[str]) -> list[dict]:
    return [{"task": "report_to_image", "study_id": s, "report": r, "real_image": real, "generated_image": g}
            for s, r, real, g in zip(ids, reports, real_paths, shown, strict=True)]


def run(eval_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict, model_workdir: str,
        out_dir: str) -> dict:
    """Evaluates the stage-2 (or stage-1) checkpoint in ``model_workdir``; writes to ``out_dir``."""
    from PIL import Image

    from mavilt_jax.data import sequences
    from mavilt_jax.evaluation import curves, generate, probe, report_card, suite

    out = pathlib.Path(out_dir)
    pred_dir = out / "predictions"
    (pred_dir / "images").mkdir(parents=True, exist_ok=True)
    ec = eval_config
    cfg = suite.EvalConfig(resamples=ec.resamples, nlg_resamples=ec.nlg_resamples, fid_resamples=ec.fid_resamples,
                           seed=ec.seed, meteor=ec.meteor, fid_extractors=tuple(ec.fid_extractors))
    gen_cfg = generate.GenerationConfig(max_report_tokens=ec.max_report_tokens, guidance_scale=ec.guidance_scale,
                                        batch_size=ec.batch_size, seed=ec.seed)
    timings: dict[str, float] = {}
    clock = time.time()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.time() - clock, 1)
        clock = time.time()

    generator = generate.load_generator(model_config, model_workdir, gen_cfg)
    selection = None
    if not ec.guidance_scale:
        selection = select_guidance(generator, model_config, ec, pred_dir / "guidance_selection",
                                    judge_scorers(ec.judge), cfg)
        gen_cfg = dataclasses.replace(gen_cfg, guidance_scale=selection["chosen"])
        generator.cfg = gen_cfg
        lap("guidance_selection")
    examples = generate.split_examples(generator, model_config, ec.split, ec.max_studies)
    train_source = generator.stage.source(model_config.data.get("train_split", "train"))
    n = len(examples)
    progress(f"evaluation: {n} {ec.split} studies; judge {ec.judge}")

    scorers = judge_scorers(ec.judge, inception="inception" in cfg.fid_extractors)

    # ---- the model -------------------------------------------------------------------------------
    records = generate.predict(generator, examples, pred_dir, progress=lambda d, t: progress(
        f"evaluation: model predictions {d}/{t} studies"))
    records_lib.write_records(pred_dir / "predictions.jsonl", records)
    lap("generate_model")
    progress("evaluation: scoring the model")
    results: dict = {"split": ec.split, "n_studies": n, "model_workdir": str(model_workdir),
                     "guidance_scale": gen_cfg.guidance_scale}
    if selection is not None:
        results["guidance_selection"] = selection
    results["model"] = _score(records, pred_dir, cfg, scorers, out_dir=out)
    lap("score_model")

    ids = [r["study_id"] for r in records if r["task"] == "report_to_image"]
    references = [r["report"] for r in records if r["task"] == "report_to_image"]
    real_paths = [r["real_image"] for r in records if r["task"] == "report_to_image"]
    gen_paths = [r["generated_image"] for r in records if r["task"] == "report_to_image"]

    # ---- control (a): no image read at all ----------------------------------------------------
    progress("evaluation: control (a) constant report / majority answer")
    train_examples = [train_source[i] for i in range(len(train_source))]
    constant = constant_report([generator.builder.report_text(e) for e in train_examples])
    answers, p_yes, overall = majority_answers([p for e in train_examples for p in sequences.vqa_pairs(e.get("vqa"))])
    control_a = [{**r, "generation": constant} for r in records if r["task"] == "report_generation"]
    control_a += [{**r, "prediction": answers.get(r["question"], overall), "p_yes": p_yes.get(r["question"], 0.5)}
                  for r in records if r["task"] == "vqa"]
    results["control_constant_report"] = {"report": constant, **_score(control_a, pred_dir, cfg, scorers)}
    lap("control_constant")

    # ---- control (b): the radiograph of another study -------------------------------------------
    perm = derangement(n, ec.seed)
    swapped = [{**e, "image": examples[j]["image"]} for e, j in zip(examples, perm, strict=True)]
    control_b = generate.predict(generator, swapped, pred_dir / "control_shuffled", tasks=("report_generation", "vqa"),
                                 progress=lambda d, t: progress(f"evaluation: control (b) shuffled images {d}/{t}"))
    # report -> image: the images generated for another study's report, judged against this one's.
    control_b += _image_records(ids, references, real_paths, [gen_paths[j] for j in perm])
    results["control_shuffled_image"] = _score(control_b, pred_dir, cfg, scorers)
    lap("control_shuffled")

    # ---- diagnostic: the instruction wording seen in training (the model's row uses held-out ones) --
    if generator.instruction and not generator.builder.config.fixed_instructions:
        generator.cfg = dataclasses.replace(gen_cfg, wording="train")
        seen = generate.predict(generator, examples, pred_dir / "training_wording", tasks=("report_generation", "vqa"),
                                progress=lambda d, t: progress(f"evaluation: model, training wording {d}/{t}"))
        generator.cfg = gen_cfg
        results["model_training_wording"] = _score(seen, pred_dir, cfg, scorers)
        lap("model_training_wording")

    # ---- ceilings: the judge on real images and on VQ-GAN reconstructions ------------------------
    progress("evaluation: ceilings (judge on real images, VQ-GAN reconstructions, code probe)")
    images = np.stack([np.asarray(e["image"]).reshape(np.asarray(e["image"]).shape[:2] + (1,)) for e in examples])
    codes = np.concatenate([generator.encode(images[i:i + 64]) for i in range(0, n, 64)])
    recon = np.concatenate([generator.decode(codes[i:i + 64]) for i in range(0, n, 64)])
    recon_paths = []
    for sid, im in zip(ids, recon, strict=True):
        recon_paths.append(f"images/{sid}_reconstruction.png")
        Image.fromarray(im).save(pred_dir / recon_paths[-1])
    progress("evaluation: report likelihood with the study's own image vs another study's")
    results["image_information"] = image_information(report_nll(generator, codes, references),
                                                     report_nll(generator, codes[perm], references), cfg)
    results["ceiling_judge_real"] = _score(_image_records(ids, references, real_paths, real_paths), pred_dir, cfg,
                                           scorers, extractors=())
    results["ceiling_reconstruction"] = _score(_image_records(ids, references, real_paths, recon_paths), pred_dir,
                                               cfg, scorers)
    lap("ceilings_images")
    if ec.probe:
        train_images = np.stack([np.asarray(e["image"]).reshape(np.asarray(e["image"]).shape[:2] + (1,))
                                 for e in train_examples])
        train_codes = np.concatenate([generator.encode(train_images[i:i + 64])
                                      for i in range(0, len(train_images), 64)])
        results["ceiling_code_probe"] = probe.code_probe(
            train_codes, np.stack([np.asarray(e["labels"]) for e in train_examples]), codes,
            np.stack([np.asarray(e["labels"]) for e in examples]), generator.layout.codebook_size,
            n_jobs=PROBE_JOBS)
        progress("evaluation: ceiling, a reader of the VQ-GAN codes (reports' labels and VQA answers)")
        results["ceiling_code_reader"] = code_reader_ceiling(
            generator, train_examples, train_codes, examples, codes, records, cfg)
        lap("ceiling_probe")

    # ---- guidance sweep ------------------------------------------------------------------------
    sweep = {}
    for scale in ec.guidance_sweep:
        if float(scale) == float(gen_cfg.guidance_scale):
            sweep[str(float(scale))] = results["model"]["report_to_image"]
            continue
        progress(f"evaluation: guidance sweep, scale {scale}")
        generator.cfg = dataclasses.replace(generator.cfg, guidance_scale=float(scale))
        folder = pred_dir / f"guidance_{scale}"
        sweep_records = generate.predict(generator, examples, folder, tasks=("report_to_image",))
        sweep[str(float(scale))] = _score(sweep_records, folder, cfg, scorers)["report_to_image"]
    generator.cfg = gen_cfg
    results["guidance_sweep"] = sweep
    lap("guidance_sweep")

    # ---- learning curves of the LLM stages ------------------------------------------------------
    stage_dirs = {"stage 1": model_config.get("init_from") or "", model_config.stage.replace("stage", "stage "): model_workdir}
    results["learning_curves"] = {name: curves.read_history(d) for name, d in stage_dirs.items() if d}

    results["timings_s"] = timings
    results["bars"] = check_bars(results, ec.bars.to_dict() if ec.get("bars") else {})
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True, default=_jsonable))
    (out / "report_card.md").write_text(render_card(results) + "\n" + report_card.render(results["model"]))
    write_sample_reports(out / "sample_reports.md", records, ec.sample_reports)
    return results


def judge_scorers(judge_dir: str, inception: bool = False) -> dict:
    """The scorers of generated images (`suite.score_records`' ``features_fns`` and
    ``classifier_fn``): the independent judge's classifier and features, and the Inception
    network's features when ``inception``; each memoized, since the real images are scored again
    for every row and guidance scale."""
    from mavilt_jax.evaluation import conditional

    features_fns, classifier_fn = conditional.classifier_scorers(judge_dir)
    features_fns = {"judge": features_fns["phi"]}
    if inception:
        from mavilt_jax.evaluation.inception import inception_features

        features_fns["inception"] = inception_features
    return {"features_fns": {k: memoized(fn) for k, fn in features_fns.items()},
            "classifier_fn": memoized(classifier_fn)}


def select_guidance(generator, model_config: ml_collections.ConfigDict, eval_config: ml_collections.ConfigDict,
                    out_dir: pathlib.Path, scorers: Mapping, cfg) -> dict:
    """The guidance scale of report -> image, chosen on the validation split: among
    ``eval_config.guidance_sweep``, the one whose images the judge recognises best (macro AUROC
    over the requested findings) for the first ``guidance_select_studies`` validation studies
    (ties: the smaller scale). The test split is not read.

    Returns {"split", "n_studies", "judge_auroc_macro": {scale: AUROC}, "chosen": scale}."""
    from mavilt_jax.evaluation import generate

    scales = sorted({float(s) for s in eval_config.guidance_sweep})
    if not scales:
        raise ValueError("evaluation.guidance_scale 0 chooses the scale among evaluation.guidance_sweep, which is "
                         "empty: give a sweep or a scale (for example guidance_scale=3.0)")
    examples = generate.split_examples(generator, model_config, "validation", eval_config.guidance_select_studies)
    judge_path = next(path for key, _, path in SUMMARY_COLUMNS if key == "judge_auroc")
    aurocs: dict[str, float] = {}
    with generator.draws_set_aside():
        base = generator.cfg
        for scale in scales:
            progress(f"evaluation: guidance scale {scale} on {len(examples)} validation studies")
            generator.cfg = dataclasses.replace(base, guidance_scale=scale)
            folder = out_dir / f"scale_{scale}"
            records = generate.predict(generator, examples, folder, tasks=("report_to_image",))
            estimate = summary_value(_score(records, folder, cfg, scorers, extractors=()), judge_path) or {}
            aurocs[str(scale)] = float("nan") if estimate.get("value") is None else float(estimate["value"])
    return {"split": "validation", "n_studies": len(examples), "judge_auroc_macro": aurocs,
            "chosen": best_scale(aurocs)}


def best_scale(aurocs: Mapping[str, float]) -> float:
    """The scale (keys: scales as strings) with the highest AUROC; ties: the smaller scale; NaN
    (a figure that could not be computed) never wins."""
    finite = [(v, -float(s)) for s, v in aurocs.items() if not math.isnan(v)]
    if not finite:
        raise ValueError(f"no guidance scale could be scored on the validation split: {dict(aurocs)}")
    return -max(finite)[1]


def code_reader_ceiling(generator, train_examples: Sequence[Mapping], train_codes: np.ndarray,
                        examples: Sequence[Mapping], codes: np.ndarray, records: Sequence[Mapping], cfg) -> dict:
    """The bars' figures for a linear reader of the VQ-GAN codes (`probe.probe_report_labels`,
    `probe.probe_vqa_answers`), fitted on the training split: CE against the labeler on the same
    reference reports as the model's, VQA on the same questions; no text, so no NLG figures."""
    from mavilt_jax.data import labels as L
    from mavilt_jax.data import sequences
    from mavilt_jax.evaluation import clinical, labeler, probe, suite
    from mavilt_jax.evaluation.vqa_metrics import normalize_answer

    index = {sequences.as_text(e.get("study_id")): i for i, e in enumerate(examples)}
    train_refs = labeler.label_reports([generator.builder.report_text(e) for e in train_examples])
    written = probe.probe_report_labels(train_codes, clinical.binarise(train_refs, cfg.uncertain), codes,
                                        generator.layout.codebook_size, seed=cfg.seed, n_jobs=PROBE_JOBS)
    reports = [r for r in records if r["task"] == "report_generation"]
    ref_labels = np.asarray([r["reference_labels"] if r.get("reference_labels") is not None
                             else labeler.label_report(r["reference"]) for r in reports], np.int8)
    gen_labels = np.where(written[[index[r["study_id"]] for r in reports]], L.POSITIVE, L.ABSENT).astype(np.int8)
    train_pairs = [(i, p["question"], normalize_answer(p["answer"]))
                   for i, e in enumerate(train_examples) for p in sequences.vqa_pairs(e.get("vqa"))]
    questions = [r for r in records if r["task"] == "vqa"]
    answers = probe.probe_vqa_answers(train_codes, train_pairs, codes,
                                      [(index[r["study_id"]], r["question"]) for r in questions],
                                      generator.layout.codebook_size, n_jobs=PROBE_JOBS)
    vqa_records = [{**r, "prediction": a, "p_yes": p} for r, (a, p) in zip(questions, answers, strict=True)]
    return {"report_generation": {"n_studies": len(reports),
                                  "clinical_efficacy": suite.score_clinical_efficacy(ref_labels, gen_labels, cfg)},
            "vqa": suite.score_vqa(vqa_records, cfg)}


def report_nll(generator, codes: np.ndarray, reports: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Teacher-forced -log p(reference report | image codes) per study, in nats per report token
    (the report prompt the model was trained on: stage 1's layout, or stage 2's "report" task)."""
    import jax
    import jax.numpy as jnp

    from mavilt_jax.data import templates

    builder = generator.builder

    def arrays(c: np.ndarray, report: str) -> dict[str, np.ndarray]:
        if not generator.instruction:
            return builder.image_to_report(c, report)
        template = (templates.fixed_template("report") if builder.config.fixed_instructions
                    else templates.default_template("report"))
        return builder.instruction("report", template, codes=c, response=report)

    model = generator.stage.model

    @jax.jit
    def nll(params, tokens, positions, targets, mask):
        logits, _ = model.apply({"params": params}, tokens, positions)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return -jnp.sum(picked * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)

    out = []
    for start in range(0, len(reports), batch_size):
        rows = [arrays(c, r) for c, r in zip(codes[start:start + batch_size], reports[start:start + batch_size],
                                              strict=True)]
        batch = {k: np.stack([row[k] for row in rows]) for k in ("tokens", "positions", "targets", "loss_mask")}
        out.append(np.asarray(nll(generator.params, batch["tokens"], batch["positions"], batch["targets"],
                                  batch["loss_mask"])))
    return np.concatenate(out)


def image_information(own: np.ndarray, other: np.ndarray, cfg) -> dict:
    """How much the radiograph tells the model about its report: the mean report NLL with the
    study's own image, with another study's, and their difference (> 0: the image is read), each
    with a bootstrap CI over studies."""
    from mavilt_jax.evaluation import bootstrap

    def stat(idx):
        return {"nll_own_image": float(own[idx].mean()), "nll_other_image": float(other[idx].mean()),
                "nll_gain_from_image": float((other[idx] - own[idx]).mean())}

    est = bootstrap.bootstrap(stat, len(own), cfg.resamples, cfg.seed, cfg.confidence)
    return {k: v.to_json() for k, v in est.items()}


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary_value(row: Mapping | None, path: Sequence[str]) -> Mapping | None:
    """An estimate ({value, ci_low, ci_high, ...}) at ``path`` of a row of results, or None."""
    if row is None:
        return None
    return _get(row, path)


def check_bars(results: Mapping, bars: Mapping[str, float]) -> dict[str, dict]:
    """{column key: {bar, value, ci_low, ci_high, met}} for the model's summary figures.

    A bar is met when the point estimate reaches it (FD bars, if any, are upper bounds)."""
    paths = {key: path for key, _, path in SUMMARY_COLUMNS}
    out = {}
    for key, bar in bars.items():
        if key not in paths:
            raise ValueError(f"unknown bar {key!r}; known: {sorted(paths)}")
        est = summary_value(results.get("model"), paths[key])
        value = None if est is None else est.get("value")
        lower_is_better = key.startswith("fd_")
        met = value is not None and value == value and (value <= bar if lower_is_better else value >= bar)
        out[key] = {"bar": bar, "value": value, "ci_low": est and est.get("ci_low"),
                    "ci_high": est and est.get("ci_high"), "met": bool(met)}
    return out


def _cell(est: Mapping | None, digits: int = 3) -> str:
    if not est or est.get("value") is None:
        return "–"
    v = est["value"]
    if v != v:
        return "n/a"
    if "ci_low" in est and est["ci_low"] is not None:
        return f"{v:.{digits}f} [{est['ci_low']:.{digits}f}, {est['ci_high']:.{digits}f}]"
    return f"{v:.{digits}f}"


def render_card(results: Mapping) -> str:
    """The summary: the model beside its controls and ceilings, the bars, the guidance sweep."""
    rows = [("Model", results.get("model")),
            ("model, training wording (diagnostic: the Model row uses held-out wordings)",
             results.get("model_training_wording")),
            ("control: constant report / majority answer", results.get("control_constant_report")),
            ("control: shuffled image (another study's radiograph)", results.get("control_shuffled_image")),
            ("ceiling: judge on the real test images", results.get("ceiling_judge_real")),
            ("ceiling: VQ-GAN reconstructions of the test images", results.get("ceiling_reconstruction")),
            ("ceiling: a linear reader of the VQ-GAN codes (report labels, VQA answers; fitted on the training split)",
             results.get("ceiling_code_reader"))]
    header = ["Row"] + [label for _, label, _ in SUMMARY_COLUMNS]
    lines = [f"# Main job: held-out {results['split']} split ({results['n_studies']} studies)", "",
             "Each figure: value [95 % CI] (bootstrap over studies: percentile; basic for FD, which resampling "
             "inflates). Controls must be far below the "
             "model; ceilings bound what the model can reach.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, row in [(name, row) for name, row in rows if row is not None]:
        cells = [_cell(summary_value(row, path), 2 if key.startswith("fd_") else 3) for key, _, path in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    info = results.get("image_information")
    if info:
        lines += ["", "Does the model read the image? Teacher-forced reference-report NLL (nats per token) with the "
                      f"study's own radiograph {_cell(info['nll_own_image'])}, with another study's "
                      f"{_cell(info['nll_other_image'])}; gain from the image {_cell(info['nll_gain_from_image'])} "
                      "(0: the image is ignored)."]
    probe_res = results.get("ceiling_code_probe")
    if probe_res:
        per_finding = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in probe_res.items()
                                if k.startswith("auroc/"))
        lines += ["", f"Ceiling, code probe (logistic regression on one-hot VQ-GAN codes -> labels, "
                      f"{probe_res['findings_scored']} findings): macro AUROC {probe_res['auroc_macro']:.3f}; {per_finding}"]
    lines += _vqa_by_question_type(rows[:4])
    if results.get("bars"):
        # Beside each bar, what the VQ-GAN codes carry: the linear reader of the codes for reports
        # and VQA, the judge on reconstructions (the best any generator over the codes draws).
        lines += ["", "## Bars", "", "| Figure | Bar | Model | Met | Ceiling of the codes |", "|---|---|---|---|---|"]
        labels = {key: label for key, label, _ in SUMMARY_COLUMNS}
        paths = {key: path for key, _, path in SUMMARY_COLUMNS}
        for key, b in results["bars"].items():
            ceiling_row = results.get("ceiling_reconstruction" if key.startswith(("judge", "fd_"))
                                      else "ceiling_code_reader")
            lines.append(f"| {labels[key]} | {'<=' if key.startswith('fd_') else '>='} {b['bar']} | "
                         f"{_cell(b)} | {'yes' if b['met'] else 'NO'} | {_cell(summary_value(ceiling_row, paths[key]))} |")
    selection = results.get("guidance_selection")
    if results.get("guidance_sweep"):
        lines += ["", "## Guidance sweep (report -> image)", ""]
        if selection:
            lines += [f"The Model row's scale, {selection['chosen']}, was chosen on {selection['n_studies']} "
                      f"{selection['split']} studies (the judge's macro AUROC there, last column); the test columns "
                      "show the trade-off.", ""]
        header = "| Scale | Judge AUROC (macro) | FD (Inception) | FD (judge) |"
        lines += [header + (f" Judge AUROC, {selection['split']} |" if selection else ""),
                  "|---|---|---|---|" + ("---|" if selection else "")]
        for scale, res in results["guidance_sweep"].items():
            cells = [_cell(_get(res, p[1:]), 2 if k.startswith("fd_") else 3)
                     for k, _, p in SUMMARY_COLUMNS if p[0] == "report_to_image"]
            if selection:
                value = selection["judge_auroc_macro"].get(str(float(scale)))
                cells.append("–" if value is None or value != value else f"{value:.3f}")
            lines.append(f"| {scale} | " + " | ".join(cells) + " |")
    if results.get("learning_curves"):
        from mavilt_jax.evaluation import curves

        lines.append(curves.render(results["learning_curves"]).rstrip("\n"))
    if results.get("timings_s"):
        lines += ["", "Evaluation wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items())]
    return "\n".join(lines) + "\n"


def _vqa_by_question_type(rows: Sequence[tuple[str, Mapping | None]]) -> list[str]:
    """VQA accuracy per question type, the model beside its controls: where the answers beat the
    per-question prior (the majority answer) and where they fall below it (a wrong answer FORMAT,
    such as yes/no to "how large", shows as accuracy near 0 with the held-out wording only)."""
    rows = [(name.split(" (")[0], row["vqa"]["metrics"]) for name, row in rows
            if row is not None and (row.get("vqa") or {}).get("metrics")]
    if not rows:
        return []
    prefix = "accuracy/question_type/"
    types = sorted({k[len(prefix):] for _, metrics in rows for k in metrics if k.startswith(prefix)})
    keys = [("all", "accuracy"), ("closed", "accuracy/answer_type/closed"), ("open", "accuracy/answer_type/open")]
    keys += [(t, prefix + t) for t in types]
    lines = ["", "VQA accuracy per question type (the majority-answer control is the per-question prior):", "",
             "| Questions | " + " | ".join(name for name, _ in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for label, key in keys:
        lines.append(f"| {label} | " + " | ".join(_cell(metrics.get(key)) for _, metrics in rows) + " |")
    return lines


def write_sample_reports(path: pathlib.Path, records: Sequence[Mapping], count: int) -> None:
    """A few generated reports beside their references."""
    rows = [r for r in records if r["task"] == "report_generation"][:count]
    lines = ["# Sample reports (held-out test studies)", ""]
    for r in rows:
        lines += [f"## {r['study_id']}", "", f"**Generated:** {r['generation']}", "",
                  f"**Reference:** {r['reference']}", ""]
    path.write_text("\n".join(lines))


def pipeline_step(config: ml_collections.ConfigDict, pipeline: ml_collections.ConfigDict, workdir: str) -> dict:
    """The evaluation step of `train.run_pipeline`: evaluates step ``config.model_step`` of the
    pipeline; skipped when ``workdir`` already holds its results.json (delete it to rerun)."""
    done = pathlib.Path(workdir) / "results.json"
    if done.exists():
        progress(f"evaluation: {done} exists, not recomputed (delete it to evaluate again)")
        return json.loads(done.read_text())
    model_workdir = str(pathlib.Path(workdir) / config.model_step)
    return run(config, pipeline[config.model_step], model_workdir, workdir)

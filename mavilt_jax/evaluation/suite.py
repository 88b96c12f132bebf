"""Scores evaluation records (:mod:`.records`) for the three tasks, with bootstrap CIs.

``score_records`` is what ``python -m mavilt_jax.evaluate`` runs: report generation (NLG + CE,
Table I), report -> image (Frechet distance + conditional correctness, Table II) and VQA
(accuracy + yes/no AUROC, Table III). Every figure comes with its percentile-bootstrap 95 % CI
over studies (VQA questions are resampled by study) and its sample count.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import bootstrap, clinical, conditional, frechet, labeler, nlg, vqa_metrics
from mavilt_jax.evaluation.records import RecordSet

FeaturesFn = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W] -> [N, F]
ClassifierFn = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W] -> probabilities [N, 14]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation options (defaults are the reported conventions).

    Attributes:
      resamples: bootstrap resamples for cheap figures (CE, VQA, conditional correctness).
      nlg_resamples: resamples for the pycocoevalcap metrics (rescored from cached statistics).
      fid_resamples: resamples for Frechet distances (one eigendecomposition each).
      seed: bootstrap seed.
      confidence: CI level.
      uncertain: CE mapping of uncertain labels: "positive" | "negative" | "ignore".
      meteor: compute METEOR (starts a JVM).
      fid_extractors: feature extractors for FD: "inception" and/or names given in
        ``features_fns`` (e.g. "phi").
      classifier_threshold: probability threshold of conditional-correctness accuracy.
      grid_studies: studies shown in the real-vs-generated image grid.
    """

    resamples: int = 1000
    nlg_resamples: int = 100
    fid_resamples: int = 50
    seed: int = 0
    confidence: float = 0.95
    uncertain: str = "positive"
    meteor: bool = True
    fid_extractors: tuple[str, ...] = ("inception",)
    classifier_threshold: float = 0.5
    grid_studies: int = 8

    def __post_init__(self):
        if self.uncertain not in clinical.UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {clinical.UNCERTAIN_POLICIES}, got {self.uncertain!r}")
        if min(self.resamples, self.nlg_resamples, self.fid_resamples) < 1:
            raise ValueError("resample counts must be >= 1")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def _estimates_json(estimates: Mapping[str, bootstrap.Estimate]) -> dict[str, dict]:
    return {name: e.to_json() for name, e in estimates.items()}


def _study_groups(records: Sequence[Mapping]) -> list[np.ndarray]:
    """Record indices per study, in first-seen order (the bootstrap's resampling unit)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r["study_id"]), []).append(i)
    return [np.array(v) for v in groups.values()]


def _labels_field(records: Sequence[Mapping], field: str, text_field: str) -> np.ndarray:
    given = [r.get(field) for r in records]
    if all(g is not None and len(g) == L.NUM_OBSERVATIONS for g in given):
        return np.asarray(given, np.int8)
    return labeler.label_reports([r[text_field] for r in records])


def score_report_generation(records: list[dict], cfg: EvalConfig) -> dict:
    """NLG (pycocoevalcap) and CE (labeler) figures; adds the labels to each record."""
    references = [str(r["reference"]) for r in records]
    generations = [str(r["generation"]) for r in records]
    ref_labels = _labels_field(records, "reference_labels", "reference")
    gen_labels = _labels_field(records, "generated_labels", "generation")
    for r, a, b in zip(records, ref_labels, gen_labels):
        r["reference_labels"], r["generated_labels"] = a.tolist(), b.tolist()
    n = len(records)
    with nlg.NLGScorer(references, generations, meteor=cfg.meteor) as scorer:
        nlg_est = bootstrap.bootstrap(scorer.score, n, cfg.nlg_resamples, cfg.seed, cfg.confidence)
    return {"n_studies": n, "nlg": _estimates_json(nlg_est),
            "clinical_efficacy": score_clinical_efficacy(ref_labels, gen_labels, cfg)}


def score_clinical_efficacy(reference_labels: np.ndarray, generated_labels: np.ndarray, cfg: EvalConfig) -> dict:
    """CE (14 observations and top 5) from label arrays int [N, 14], resampled by study."""
    counts = clinical.ce_counts(reference_labels, generated_labels, cfg.uncertain)
    counts5 = clinical.ce_counts(reference_labels, generated_labels, cfg.uncertain, L.TOP5)

    def ce_stat(idx):
        out = clinical.ce_from_counts(counts.take(idx))
        out.update({f"top5/{k}": v for k, v in clinical.ce_from_counts(counts5.take(idx)).items()
                    if not k.startswith("f1/")})
        return out

    return _estimates_json(bootstrap.bootstrap(ce_stat, len(counts.tp), cfg.resamples, cfg.seed, cfg.confidence))


def _vqa_arrays(records: Sequence[Mapping]) -> dict[str, np.ndarray]:
    answers = [vqa_metrics.normalize_answer(r["answer"]) for r in records]
    return {
        "correct": np.array([vqa_metrics.answers_match(r["prediction"], r["answer"]) for r in records]),
        "question_type": np.array([str(r.get("question_type") or "") for r in records]),
        "answer_type": np.array([str(r.get("answer_type") or "") for r in records]),
        "yes_no": np.array([a in ("yes", "no") and r.get("p_yes") is not None for a, r in zip(answers, records)]),
        "is_yes": np.array([a == "yes" for a in answers]),
        "p_yes": np.array([float(r["p_yes"]) if r.get("p_yes") is not None else np.nan for r in records]),
    }


def score_vqa(records: list[dict], cfg: EvalConfig) -> dict:
    """Accuracy overall / per question and answer type, yes/no AUROC; resampled by study."""
    arrays = _vqa_arrays(records)
    for r, c in zip(records, arrays["correct"]):
        r["correct"] = bool(c)
    groups = _study_groups(records)
    types = {key: sorted(set(arrays[key]) - {""}) for key in ("question_type", "answer_type")}

    def stat(study_idx):
        rows = np.concatenate([groups[i] for i in study_idx])
        correct = arrays["correct"][rows]
        out = {"accuracy": float(correct.mean())}
        for key, names in types.items():
            for name in names:
                sel = arrays[key][rows] == name
                out[f"accuracy/{key}/{name}"] = float(correct[sel].mean()) if sel.any() else np.nan
        yn = rows[arrays["yes_no"][rows]]
        if arrays["yes_no"].any():
            out["auroc_yes_no"] = vqa_metrics.auroc(arrays["p_yes"][yn], arrays["is_yes"][yn]) if yn.size else np.nan
        return out

    est = bootstrap.bootstrap(stat, len(groups), cfg.resamples, cfg.seed, cfg.confidence)
    counts = {"questions": len(records), "yes_no_with_probability": int(arrays["yes_no"].sum())}
    for key, names in types.items():
        for name in names:
            counts[f"{key}/{name}"] = int((arrays[key] == name).sum())
    return {"n_studies": len(groups), "counts": counts, "metrics": _estimates_json(est)}


def load_grayscale(path: str | pathlib.Path) -> np.ndarray:
    """A PNG/JPEG as uint8 [H, W]; raises OSError/ValueError for unreadable files."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.uint8)


def _load(record: Mapping, field: str, base_dir: pathlib.Path) -> np.ndarray | None:
    value = record.get(field)
    if value is None:
        return None
    path = pathlib.Path(value)
    return load_grayscale(path if path.is_absolute() else base_dir / path)


def _features(fn: FeaturesFn, images: Sequence[np.ndarray]) -> np.ndarray:
    """features_fn over images of possibly different sizes (one call per size)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    feats = [None] * len(images)
    for idx in by_shape.values():
        batch = frechet.features_in_batches(fn, np.stack([images[i] for i in idx]), batch_size=32)
        for i, f in zip(idx, batch):
            feats[i] = f
    return np.stack(feats)


def score_report_to_image(records: list[dict], cfg: EvalConfig, base_dir: pathlib.Path,
                          features_fns: Mapping[str, FeaturesFn] | None = None,
                          classifier_fn: ClassifierFn | None = None, grid_path: pathlib.Path | None = None) -> dict:
    """Frechet distance per extractor (real vs generated, paired by study) and conditional
    correctness; unreadable images are skipped and counted."""
    features_fns = dict(features_fns or {})
    if "inception" in cfg.fid_extractors and "inception" not in features_fns:
        from mavilt_jax.evaluation.inception import inception_features

        features_fns["inception"] = inception_features
    usable, real, generated, skipped = [], [], [], []
    for r in records:
        try:
            gen_im, real_im = _load(r, "generated_image", base_dir), _load(r, "real_image", base_dir)
        except (OSError, ValueError, UnidentifiedImageError) as e:
            skipped.append({"study_id": r["study_id"], "reason": f"{type(e).__name__}: {e}"})
            continue
        usable.append(r)
        generated.append(gen_im)
        real.append(real_im)
    out: dict = {"n_studies": len(usable), "skipped_images": skipped, "fid": {}, "conditional": None}
    paired = [i for i, im in enumerate(real) if im is not None]
    for name in cfg.fid_extractors:
        if name not in features_fns:
            raise ValueError(f"no feature extractor named {name!r} (have: {', '.join(sorted(features_fns)) or 'none'})")
        if len(paired) < 2:
            out["fid"][name] = {"skipped": f"needs >= 2 studies with real and generated images, have {len(paired)}"}
            continue
        feats_real = _features(features_fns[name], [real[i] for i in paired])
        feats_gen = _features(features_fns[name], [generated[i] for i in paired])

        def fd_stat(idx, a=feats_real, b=feats_gen):
            if len(np.unique(idx)) < 2:
                return {"fd": np.nan}
            return {"fd": frechet.frechet_distance(a[idx], b[idx])}

        # Basic interval: resampling with replacement inflates FD (see `bootstrap`).
        est = bootstrap.bootstrap(fd_stat, len(paired), cfg.fid_resamples, cfg.seed, cfg.confidence,
                                  method="basic")["fd"]
        out["fid"][name] = {**est.to_json(), "n_real": len(paired), "n_generated": len(paired),
                            "feature_dim": int(feats_real.shape[1])}
    out["conditional"] = _conditional(usable, generated, cfg, classifier_fn)
    if grid_path is not None and paired:
        shown = paired[: cfg.grid_studies]
        write_image_grid(grid_path, [real[i] for i in shown], [generated[i] for i in shown])
        out["grid"] = str(grid_path.name)
    return out


def _conditional(records: list[dict], generated: list[np.ndarray], cfg: EvalConfig,
                 classifier_fn: ClassifierFn | None) -> dict | None:
    have_request = [r.get("requested_labels") is not None or r.get("report") is not None for r in records]
    rows = [i for i, ok in enumerate(have_request) if ok]
    if not rows:
        return None
    given = [records[i].get("classifier_probs") for i in rows]
    if all(g is not None for g in given):
        probs = np.asarray(given, np.float64)
    elif classifier_fn is not None:
        probs = np.concatenate([np.asarray(classifier_fn(generated[i][None]), np.float64) for i in rows])
    else:
        return None
    requested = []
    for i in rows:
        r = records[i]
        vec = (np.asarray(r["requested_labels"], np.int8) if r.get("requested_labels") is not None
               else labeler.label_report(r["report"]))
        r["requested_labels"] = vec.tolist()
        requested.append(vec)
    requested = np.stack(requested)
    groups = _study_groups([records[i] for i in rows])

    def stat(study_idx):
        sel = np.concatenate([groups[i] for i in study_idx])
        full = conditional.conditional_correctness(probs[sel], requested[sel], threshold=cfg.classifier_threshold)
        return {k: v for k, v in full.items() if k.startswith(("auroc", "accuracy"))}

    point = conditional.conditional_correctness(probs, requested, threshold=cfg.classifier_threshold)
    est = bootstrap.bootstrap(stat, len(groups), cfg.resamples, cfg.seed, cfg.confidence)
    counts = {k: v for k, v in point.items() if k.startswith(("n/", "n_requested/")) or k == "findings_scored"}
    return {"n_studies": len(groups), "counts": counts, "metrics": _estimates_json(est)}


def write_image_grid(path: pathlib.Path, real: Sequence[np.ndarray], generated: Sequence[np.ndarray], side: int = 128) -> None:
    """Two rows: real images on top, the images generated from the same reports below."""
    grid = Image.new("L", (side * len(real), 2 * side))
    for col, (a, b) in enumerate(zip(real, generated)):
        for row, im in enumerate((a, b)):
            grid.paste(Image.fromarray(im).resize((side, side), Image.BILINEAR), (col * side, row * side))
    grid.save(path)


def score_records(record_set: RecordSet, cfg: EvalConfig, *, features_fns: Mapping[str, FeaturesFn] | None = None,
                  classifier_fn: ClassifierFn | None = None, out_dir: pathlib.Path | None = None) -> dict:
    """All figures for the tasks present in ``record_set``; records are annotated in place."""
    results: dict = {"config": dataclasses.asdict(cfg), "skipped_records": record_set.skipped,
                     "conventions": conventions(cfg)}
    tasks = record_set.by_task
    if tasks["report_generation"]:
        results["report_generation"] = score_report_generation(tasks["report_generation"], cfg)
    if tasks["report_to_image"]:
        grid = out_dir / "image_grid.png" if out_dir is not None else None
        results["report_to_image"] = score_report_to_image(tasks["report_to_image"], cfg, record_set.base_dir,
                                                           features_fns, classifier_fn, grid)
    if tasks["vqa"]:
        results["vqa"] = score_vqa(tasks["vqa"], cfg)
    return results


def conventions(cfg: EvalConfig) -> dict[str, str]:
    level = f"{cfg.confidence:.0%}"
    return {
        "nlg": nlg.CONVENTIONS,
        "clinical_efficacy": (
            f"CheXpert-style rule labeler (spaCy + negspacy) on reference and generation; blank -> negative, "
            f"uncertain -> {cfg.uncertain}; micro = pooled TP/FP/FN, macro = mean over observations; "
            f"14 observations and TOP5 ({', '.join(L.TOP5)})"),
        "frechet": ("Frechet distance of real vs generated images paired by study (float64, symmetric matrix "
                    "square root); extractors: " + ", ".join(cfg.fid_extractors)),
        "conditional": (f"independent classifier on generated images vs findings requested by the report "
                        f"(positive -> 1, negative/blank -> 0, uncertain left out); accuracy at p >= "
                        f"{cfg.classifier_threshold}; AUROC rank-based with ties"),
        "vqa": "exact match after normalisation (lower case, no punctuation/articles, lists as sets); "
               "AUROC of yes/no questions from p(yes), Mann-Whitney with ties",
        "bootstrap": (f"{level} percentile bootstrap over studies, seed {cfg.seed}; {cfg.resamples} resamples "
                      f"(CE, VQA, conditional), {cfg.nlg_resamples} (NLG), {cfg.fid_resamples} (FD)"),
    }

"""Evaluates a model (Tables I-III).

  python -m mavilt_jax.evaluate --workdir=OUT --predictions=FILE.jsonl
      scores a predictions file: one JSON record per study and task (format in
      ``mavilt_jax/evaluation/records.py``);
  python -m mavilt_jax.evaluate --config=configs/stage2.py --checkpoint=TRAIN_WORKDIR --workdir=OUT
      loads the stage-1/2 checkpoint, generates reports, images and VQA answers for ``--split``
      (``mavilt_jax/evaluation/generate.py``), writes them to OUT/predictions/, then scores them.

``--phi_checkpoint`` (a trained CXR-encoder workdir) adds the Frechet distance on phi features and
conditional correctness judged by phi. Written to ``--workdir``:
  results.json     every figure with its 95 % CI and sample count, and the conventions;
  report_card.md   Tables I-III (report generation, report -> image, VQA) in the paper's layout;
  per_sample.jsonl the records with what scoring added (labeler labels, VQA correctness), so
                   that others can re-score them;
  image_grid.png   real vs generated images for the same reports (when both are given).
Options come from ``--config`` (its ``evaluation`` field, if any) and are overridden by flags.
A workdir that already holds a results.json is refused unless ``--overwrite`` is given. Generated
predictions are appended batch by batch, so an interrupted run resumes after the studies written.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from mavilt_jax import cli, prerequisites
from mavilt_jax.evaluation import records as records_lib

# The scoring modules (spaCy, pycocoevalcap) load after the flags parse, so that a bad argument
# is answered at once.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional config file with an `evaluation` field.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "Predictions JSONL (references and generations).")
_RESAMPLES = flags.DEFINE_integer("resamples", None, "Bootstrap resamples for CE, VQA and conditional figures.")
_NLG_RESAMPLES = flags.DEFINE_integer("nlg_resamples", None, "Bootstrap resamples for the pycocoevalcap metrics.")
_FID_RESAMPLES = flags.DEFINE_integer("fid_resamples", None, "Bootstrap resamples for Frechet distances.")
_SEED = flags.DEFINE_integer("seed", None, "Bootstrap seed.")
_UNCERTAIN = flags.DEFINE_enum("uncertain", None, ["positive", "negative", "ignore"], "CE mapping of uncertain labels.")
_METEOR = flags.DEFINE_boolean("meteor", None, "Compute METEOR (starts a JVM).")
_FID_EXTRACTORS = flags.DEFINE_list("fid_extractors", None, "Feature extractors for the Frechet distance (inception, phi).")
_PHI = flags.DEFINE_string("phi_checkpoint", None, "CXR-encoder workdir: phi features (FD) and the classifier of conditional correctness.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Stage-1/2 training workdir to generate from (default: --workdir).")
_SPLIT = flags.DEFINE_string("split", "test", "Split to generate for.")
_MAX_STUDIES = flags.DEFINE_integer("max_studies", 0, "Generate for the first N studies only (0: all).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 1.0, "Classifier-free guidance scale for report -> image (1: none).")
_MAX_TOKENS = flags.DEFINE_integer("max_report_tokens", 128, "Decode steps of a generated report.")
_METHOD = flags.DEFINE_string("method", "MAViLT (this run)", "Row label of the report card's tables.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace the results.json of an earlier evaluation in --workdir.")
flags.mark_flags_as_required(["workdir"])

_FLAG_FIELDS = {"resamples": _RESAMPLES, "nlg_resamples": _NLG_RESAMPLES, "fid_resamples": _FID_RESAMPLES,
                "seed": _SEED, "uncertain": _UNCERTAIN, "meteor": _METEOR, "fid_extractors": _FID_EXTRACTORS}


def eval_config():
    """EvalConfig from the config file's ``evaluation`` field, then the flags that were given."""
    from mavilt_jax.evaluation import suite

    fields = {f.name for f in dataclasses.fields(suite.EvalConfig)}
    values = {}
    config = _CONFIG.value
    if config is not None and "evaluation" in config:
        section = config.evaluation.to_dict()
        unknown = set(section) - fields
        if unknown:
            raise ValueError(f"unknown evaluation options in the config: {', '.join(sorted(unknown))}")
        values.update(section)
    values.update({name: flag.value for name, flag in _FLAG_FIELDS.items() if flag.value is not None})
    if "fid_extractors" in values:
        values["fid_extractors"] = tuple(values["fid_extractors"])
    return suite.EvalConfig(**values)


def refuse_overwrite(workdir: str | pathlib.Path) -> None:
    """Raises FileExistsError when ``workdir`` holds the results.json of an earlier evaluation."""
    path = pathlib.Path(workdir) / "results.json"
    if path.exists():
        raise FileExistsError(f"{path} exists (an earlier evaluation); pass --overwrite to replace it, "
                              "or choose another --workdir")


def evaluate(predictions: str | pathlib.Path, workdir: str | pathlib.Path, cfg, method: str = "MAViLT (this run)",
             overwrite: bool = False, **score_kwargs) -> dict:
    """Scores ``predictions`` with ``cfg`` (a ``suite.EvalConfig``) and writes the outputs to
    ``workdir``; ``score_kwargs`` go to ``suite.score_records`` (features_fns, classifier_fn).
    Returns the results. An earlier results.json in ``workdir`` is replaced only with
    ``overwrite`` (else FileExistsError)."""
    from mavilt_jax.evaluation import report_card, suite

    if not overwrite:
        refuse_overwrite(workdir)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    record_set = records_lib.read_records(predictions)
    if record_set.skipped:
        logging.warning("%d input lines skipped; first: line %d: %s", len(record_set.skipped),
                        record_set.skipped[0]["line"], record_set.skipped[0]["reason"])
    results = suite.score_records(record_set, cfg, out_dir=workdir, **score_kwargs)
    results["predictions"] = str(predictions)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    (workdir / "report_card.md").write_text(report_card.render(results, method))
    records_lib.write_records(workdir / "per_sample.jsonl",
                              [r for task in records_lib.TASKS for r in record_set.by_task[task]])
    return results


def phi_scorers(phi_checkpoint: str) -> tuple[dict, object]:
    """({"phi": features_fn}, classifier_fn) of a trained CXR encoder (`conditional.classifier_scorers`)."""
    from mavilt_jax.evaluation import conditional

    return conditional.classifier_scorers(phi_checkpoint)


def generate_predictions(config, checkpoint: str, out_dir: pathlib.Path, split: str, max_studies: int,
                         gen_cfg) -> pathlib.Path:
    """Generates for ``split`` with the checkpoint; returns the predictions JSONL it wrote.

    Records are appended batch by batch; an interrupted run with the same settings (kept in
    ``generation.json`` beside them) resumes after the studies already written."""
    from mavilt_jax.evaluation import generate

    path = out_dir / "predictions.jsonl"
    settings = {"checkpoint": str(pathlib.Path(checkpoint).absolute()), "split": split, "max_studies": max_studies,
                "generation": dataclasses.asdict(gen_cfg)}
    settings_path = out_dir / "generation.json"
    if path.exists():
        earlier = json.loads(settings_path.read_text()) if settings_path.exists() else None
        if earlier != settings:
            raise ValueError(f"{path} holds predictions made with other settings ({settings_path}); "
                             "remove that folder or choose another --workdir")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2))
    generator = generate.load_generator(config, checkpoint, gen_cfg)
    examples = generate.split_examples(generator, config, split, max_studies)
    if not examples:
        raise ValueError(f"split {split!r} has no studies")
    records = generate.predict(generator, examples, out_dir, records_path=path)
    logging.info("Predictions: %d records for %d %s studies -> %s", len(records), len(examples), split, path)
    return path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if not _OVERWRITE.value:  # before any work: an earlier evaluation's results stay
            refuse_overwrite(_WORKDIR.value)
        cfg = eval_config()
        score_kwargs = {}
        if _PHI.value:
            prerequisites.require_workdir(_PHI.value, ("cxr_encoder",), what="a trained CXR encoder (phi)",
                                          variant="--phi_checkpoint", runlocal=True)
            features_fns, classifier_fn = phi_scorers(_PHI.value)
            score_kwargs = {"features_fns": features_fns, "classifier_fn": classifier_fn}
        predictions = _PREDICTIONS.value
        if predictions is None:
            if _CONFIG.value is None:
                raise ValueError("give --predictions=FILE.jsonl, or --config (and --checkpoint) to generate from a checkpoint")
            from mavilt_jax.evaluation import generate

            prerequisites.require_workdir(_CHECKPOINT.value or _WORKDIR.value, ("stage2", "stage1"),
                                          what="a stage-1/2 training workdir", variant="--checkpoint", runlocal=True)
            gen_cfg = generate.GenerationConfig(max_report_tokens=_MAX_TOKENS.value, guidance_scale=_GUIDANCE.value,
                                                seed=cfg.seed)
            predictions = generate_predictions(_CONFIG.value, _CHECKPOINT.value or _WORKDIR.value,
                                               pathlib.Path(_WORKDIR.value) / "predictions", _SPLIT.value,
                                               _MAX_STUDIES.value, gen_cfg)
        evaluate(predictions, _WORKDIR.value, cfg, _METHOD.value, overwrite=_OVERWRITE.value, **score_kwargs)
    except (FileNotFoundError, FileExistsError, ValueError, prerequisites.MissingPrerequisite) as e:
        cli.usage_exit(str(e))
    logging.info("Wrote results.json and report_card.md to %s", _WORKDIR.value)


def run() -> None:
    app.run(main, flags_parser=cli.absl_flags_parser("workdir", __doc__))


if __name__ == "__main__":
    run()

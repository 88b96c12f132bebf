"""Scores a predictions file: ``python -m mavilt_jax.evaluate --workdir=DIR --predictions=FILE.jsonl``.

The predictions file holds one JSON record per study and task (format in
``mavilt_jax/evaluation/records.py``). Written to ``--workdir``:
  results.json     every figure with its 95 % CI and sample count, and the conventions;
  report_card.md   Tables I-III (report generation, report -> image, VQA) in the paper's layout;
  per_sample.jsonl the records with what scoring added (labeler labels, VQA correctness), so
                   that others can re-score them;
  image_grid.png   real vs generated images for the same reports (when both are given).
Options come from ``--config`` (its ``evaluation`` field, if any) and are overridden by flags.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
_FID_EXTRACTORS = flags.DEFINE_list("fid_extractors", None, "Feature extractors for the Frechet distance (inception).")
flags.mark_flags_as_required(["workdir", "predictions"])

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


def evaluate(predictions: str | pathlib.Path, workdir: str | pathlib.Path, cfg, **score_kwargs) -> dict:
    """Scores ``predictions`` with ``cfg`` (a ``suite.EvalConfig``) and writes the outputs to
    ``workdir``; ``score_kwargs`` go to ``suite.score_records`` (features_fns, classifier_fn).
    Returns the results."""
    from mavilt_jax.evaluation import report_card, suite

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    record_set = records_lib.read_records(predictions)
    if record_set.skipped:
        logging.warning("%d input lines skipped; first: line %d: %s", len(record_set.skipped),
                        record_set.skipped[0]["line"], record_set.skipped[0]["reason"])
    results = suite.score_records(record_set, cfg, out_dir=workdir, **score_kwargs)
    results["predictions"] = str(predictions)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    (workdir / "report_card.md").write_text(report_card.render(results))
    records_lib.write_records(workdir / "per_sample.jsonl",
                              [r for task in records_lib.TASKS for r in record_set.by_task[task]])
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = eval_config()
        evaluate(_PREDICTIONS.value, _WORKDIR.value, cfg)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    logging.info("Wrote results.json and report_card.md to %s", _WORKDIR.value)


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a bad argument ends with one line, not a traceback."""
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.keys()
    except (flags.Error, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.exit(f"error: {lines[-1] if lines else type(e).__name__}\nPass --helpshort to see the flags.")
    return remaining


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()

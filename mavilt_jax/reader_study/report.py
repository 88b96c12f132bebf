"""Table V from a study's ratings: unblinds with the key and scores (see ``stats``).

Per scale (report quality on report cases, image quality on image cases):
  * each study's rating of a system is the mean over the readers who rated that case; a system's
    figure is the mean over its studies, with a percentile-bootstrap CI resampling studies;
  * duplicate cases count only for intra-reader consistency, never in the means or alpha.
Written to OUT (default STUDY/report): results.json and report_card.md (the evaluation's report
card with Table V).
"""

from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np

from mavilt_jax.evaluation import report_card
from mavilt_jax.reader_study import stats
from mavilt_jax.reader_study import store as store_lib
from mavilt_jax.reader_study import study as study_lib


def score_study(study_dir: str | pathlib.Path, resamples: int = 1000, seed: int = 0) -> dict:
    """The ``reader_study`` results of a study (every figure with its CI)."""
    study, key = study_lib.load_cases(study_dir), study_lib.load_key(study_dir)
    ratings = store_lib.read_ratings(study_dir)
    readers = sorted({r["reader"] for r in ratings})
    score = {(r["reader"], r["case_id"]): float(r["score"]) for r in ratings}
    systems = list(key["systems"])
    out = {"systems": systems, "readers": [{"name": n, "ratings": sum(r["reader"] == n for r in ratings)} for n in readers],
           "n_cases": len(study["cases"]), "n_ratings": len(ratings), "resamples": resamples, "scales": {}}
    for kind, scale in study["scales"].items():
        cases = {c: k for c, k in key["cases"].items() if k["kind"] == kind}
        originals = sorted(c for c, k in cases.items() if k["duplicate_of"] is None)
        studies = sorted({cases[c]["study_id"] for c in originals})
        column = {s: j for j, s in enumerate(studies)}
        in_kind = [s for s in systems if any(cases[c]["system"] == s for c in originals)]
        per_study = {s: np.full(len(studies), np.nan) for s in in_kind}
        for c in originals:
            given = [score[(r, c)] for r in readers if (r, c) in score]
            if given:
                per_study[cases[c]["system"]][column[cases[c]["study_id"]]] = np.mean(given)
        reliability = np.array([[score.get((r, c), np.nan) for c in originals] for r in readers])
        reliability = reliability.reshape(len(readers), len(originals))  # [readers, cases], also when empty
        first, second = [], []
        for r in readers:
            for c, k in cases.items():
                if k["duplicate_of"] is not None and (r, c) in score and (r, k["duplicate_of"]) in score:
                    first.append(score[(r, k["duplicate_of"])])
                    second.append(score[(r, c)])
        out["scales"][kind] = {
            "name": scale["name"], "studies": len(studies), "cases": len(originals),
            "ratings": sum(1 for (r, c) in score if c in cases),
            "means": stats.system_means(per_study, resamples, seed) if studies else {},
            "inter_reader": stats.inter_reader(reliability, resamples, seed),
            "intra_reader": stats.intra_reader(np.array(first), np.array(second), resamples, seed),
            "paired": [{"a": a, "b": b, **stats.paired_comparison(per_study[a], per_study[b], resamples, seed)}
                       for a, b in itertools.combinations(in_kind, 2)],
        }
    return out


CONVENTIONS = {
    "ratings": "1 (poor) to 5 (excellent); report quality = clinical accuracy and coherence of a system's report "
               "for the radiograph; image quality = realism of a system's image and its agreement with the reference report",
    "blinding": "readers saw opaque case ids in their own random order; systems were unblinded only for this table",
    "means": "mean over studies of the mean over readers; 95 % CI: percentile bootstrap over studies",
    "agreement": "Krippendorff's alpha, ordinal metric (krippendorff package), readers x original cases; CI over cases",
    "intra-reader": "each reader's two ratings of a duplicated case; alpha (ordinal), exact agreement, mean |difference|",
    "paired": "per-study mean ratings of two systems on the same studies: mean difference A - B (paired bootstrap CI) "
              "and the two-sided Wilcoxon signed-rank test (scipy; zero differences dropped)",
}


def write_report(study_dir: str | pathlib.Path, out: str | pathlib.Path | None = None, resamples: int = 1000,
                 seed: int = 0) -> pathlib.Path:
    """Scores the study and writes results.json and report_card.md; returns the card's path."""
    out = pathlib.Path(out) if out else pathlib.Path(study_dir) / "report"
    results = {"reader_study": score_study(study_dir, resamples, seed), "conventions": CONVENTIONS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    card = out / "report_card.md"
    card.write_text(report_card.render(results))
    return card

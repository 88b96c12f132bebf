"""A VQA set for real reports: questions from the labeler's reading of IU X-ray reports.

For each report (findings + impression) of ``indiana_reports.csv``, the labeler
(:mod:`.labeler`) gives the 14 CheXpert states and ``data.vqa.vqa_from_labels`` turns them into
presence / normality / "which abnormalities" questions with balanced yes/no answers. Study ids
are those of R2Gen and the IU X-ray builder ("CXR<uid>_IM-<nnnn>"), taken from
``indiana_projections.csv``, so the set can be restricted to R2Gen's test split.

``python -m mavilt_jax.evaluation.real_vqa --reports_csv=... --out=vqa.jsonl [--split=test]``
"""

from __future__ import annotations

import collections
import csv
import pathlib
import re
import sys

import numpy as np

from mavilt_jax.data import vqa as vqa_lib
from mavilt_jax.evaluation import labeler, records
from mavilt_jax.evaluation.iu_mesh import report_text


def iu_study_ids(projections_csv: str | pathlib.Path, known: set[str] | None = None) -> dict[str, str]:
    """uid -> study id, from the image file names ("2384_IM-0942-1001.dcm.png" -> "CXR2384_IM-0942").

    Where ``known`` ids are given (R2Gen's), an id spelled "CXR<uid>_<uid>_IM-..." there wins.
    """
    ids: dict[str, str] = {}
    with open(projections_csv, newline="") as f:
        for row in csv.DictReader(f):
            uid = row["uid"].strip()
            if uid in ids:
                continue
            prefix = re.sub(r"-\d+(\.dcm)?\.png$", "", row["filename"].strip())
            candidates = [f"CXR{prefix}", f"CXR{uid}_{prefix}"]
            chosen = next((c for c in candidates if known and c in known), candidates[0])
            ids[uid] = chosen
    return ids


def read_split(split_csv: str | pathlib.Path) -> dict[str, str]:
    """study id -> split name from r2gen_split.csv (columns study_id, split, ...)."""
    with open(split_csv, newline="") as f:
        return {row["study_id"].strip(): row["split"].strip() for row in csv.DictReader(f)}


def build_iu_vqa(reports_csv: str | pathlib.Path, projections_csv: str | pathlib.Path | None = None,
                 split_csv: str | pathlib.Path | None = None, split: str | None = None,
                 seed: int = 0) -> list[dict]:
    """VQA pairs {study_id, uid, question, answer, answer_type, question_type} for IU X-ray.

    ``projections_csv`` defaults to the file beside ``reports_csv``; ``split`` (e.g. "test")
    keeps the studies of that split of ``split_csv`` (default: r2gen_split.csv beside it).
    Each study's questions depend on (seed, uid) only.
    """
    reports_csv = pathlib.Path(reports_csv)
    projections_csv = pathlib.Path(projections_csv or reports_csv.parent / "indiana_projections.csv")
    splits = None
    if split is not None:
        splits = read_split(split_csv or reports_csv.parent / "r2gen_split.csv")
        if split not in set(splits.values()):
            raise ValueError(f"split {split!r} not in {sorted(set(splits.values()))}")
    study_ids = iu_study_ids(projections_csv, set(splits) if splits else None)
    with open(reports_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if report_text(r).strip() and r["uid"].strip() in study_ids]
    if splits is not None:
        rows = [r for r in rows if splits.get(study_ids[r["uid"].strip()]) == split]
    label_vectors = labeler.label_reports([report_text(r) for r in rows])
    out = []
    for row, vec in zip(rows, label_vectors):
        uid = row["uid"].strip()
        rng = np.random.default_rng([seed, int(uid)])
        for pair in vqa_lib.vqa_from_labels(vec, rng):
            out.append({"study_id": study_ids[uid], "uid": uid, **pair})
    return out


def summary(items: list[dict]) -> dict[str, int]:
    counts = collections.Counter(f"{i['question_type']}/{i['answer']}" if i["answer_type"] == "closed"
                                 else i["question_type"] for i in items)
    return {"questions": len(items), "studies": len({i["study_id"] for i in items}), **dict(sorted(counts.items()))}


def main(argv: list[str] | None = None) -> int:
    from mavilt_jax import cli

    parser = cli.ArgumentParser(prog="python -m mavilt_jax.evaluation.real_vqa", description=__doc__.splitlines()[0])
    parser.add_argument("--reports_csv", required=True, help="indiana_reports.csv")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--split", default=None, help="R2Gen split to keep (train/val/test); default all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question sampling")
    args = parser.parse_args(argv)
    try:
        items = build_iu_vqa(args.reports_csv, split=args.split, seed=args.seed)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records.write_records(args.out, items)
    print(summary(items))
    return 0


if __name__ == "__main__":
    sys.exit(main())

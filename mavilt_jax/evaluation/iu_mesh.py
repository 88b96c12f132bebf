"""The labeler against IU X-ray's MeSH annotations (column ``Problems`` of indiana_reports.csv).

The Open-i indexers annotated each IU X-ray report with MeSH-based problem terms. They list
findings that are present (hedged findings included), never negated ones, so they give a
per-report positive/not-positive reference for the observations they cover. The map from MeSH
terms to CheXpert observations is the one the IU X-ray builder labels with,
``mavilt_jax.data.mesh_terms`` (stated there): heads from the ``Problems`` column, qualified terms
("Cardiac Shadow/enlarged", "Density/lung/hilum/left/round") from the ``MeSH`` column.
Enlarged Cardiomediastinum and Pleural Other are not scored: the map's terms for them
(Mediastinum/enlarged or /prominent, Thickening/pleura) cover only part of what each means in
CheXpert (Pleural Other also takes pleural scarring and calcification), so they are no clean
reference.
"No Finding" is scored twice: against "normal" (strict: any indexed abnormality, e.g. a calcified
granuloma or spine degeneration, makes the study not normal), and in CheXpert's sense
("No Finding*": no mapped pathology indexed, Support Devices aside), which is what the labeler's
rule means.
Studies indexed "No Indexing" are left out. A labeler prediction counts as positive when it is
positive, or (``uncertain_as_positive``, the default, since the indexers annotate hedged
findings) uncertain.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from mavilt_jax.data import labels as L
from mavilt_jax.data import mesh_terms
from mavilt_jax.evaluation import labeler

NO_FINDING_CHEXPERT = "No Finding*"
SCORED: tuple[str, ...] = (
    "No Finding", NO_FINDING_CHEXPERT, "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture", "Support Devices",
)


def mesh_reference(problems: str, mesh: str = "") -> np.ndarray:
    """``Problems`` (and qualified ``MeSH``) cells -> bool [14]: observations marked present.

    No Finding is strict here: only a study indexed "normal" and nothing else.
    """
    terms = [t.strip() for t in problems.split(";") if t.strip()]
    present = mesh_terms.mesh_observations(terms + mesh.split(";"))
    present.discard("No Finding")
    if terms == ["normal"]:
        present.add("No Finding")
    ref = np.zeros((L.NUM_OBSERVATIONS,), bool)
    ref[[L.INDEX[name] for name in present]] = True
    return ref


def load_iu_reports(reports_csv: str | pathlib.Path) -> list[dict[str, str]]:
    """Rows of indiana_reports.csv that carry an indexing and some report text."""
    with open(reports_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        text = report_text(row)
        if row.get("Problems", "").strip() in ("", "No Indexing") or not text:
            continue
        out.append(row)
    return out


def report_text(row: dict[str, str]) -> str:
    """Findings + impression, the part of a report that the labeler reads."""
    return " ".join(part.strip() for part in (row.get("findings", ""), row.get("impression", "")) if part)


def compare_with_mesh(reports_csv: str | pathlib.Path, uncertain_as_positive: bool = True
                      ) -> dict[str, dict[str, float]]:
    """Per-observation precision, recall, F1 and counts of the labeler vs the MeSH reference."""
    rows = load_iu_reports(reports_csv)
    predicted = labeler.label_reports([report_text(r) for r in rows])
    positive_states = (L.POSITIVE, L.UNCERTAIN) if uncertain_as_positive else (L.POSITIVE,)
    pred = np.isin(predicted, positive_states)
    ref = np.stack([mesh_reference(r["Problems"], r.get("MeSH", "")) for r in rows])
    pathologies = [L.INDEX[n] for n in SCORED if n not in ("No Finding", NO_FINDING_CHEXPERT, "Support Devices")]
    table = {}
    for name in SCORED:
        if name == NO_FINDING_CHEXPERT:
            i = L.INDEX["No Finding"]
            p, r = pred[:, i], ~ref[:, pathologies].any(axis=1)
        else:
            i = L.INDEX[name]
            p, r = pred[:, i], ref[:, i]
        tp = int((p & r).sum())
        fp = int((p & ~r).sum())
        fn = int((~p & r).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[name] = {"precision": precision, "recall": recall, "f1": f1,
                       "tp": tp, "fp": fp, "fn": fn, "support": tp + fn, "studies": len(rows)}
    return table

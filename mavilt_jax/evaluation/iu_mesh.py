"""The labeler against IU X-ray's MeSH annotations (column ``Problems`` of indiana_reports.csv).

The Open-i indexers annotated each IU X-ray report with MeSH-based problem terms. They list
findings that are present (hedged findings included), never negated ones, so they give a
per-report positive/not-positive reference for the observations they cover. The map from MeSH
terms to CheXpert observations (stated here, used by ``benchmarks/eval_labeler_iu.py``):

  No Finding                 "normal" (the report's only term)
  Cardiomegaly               Cardiomegaly
  Lung Opacity               Opacity, Airspace Disease, Infiltrate, Consolidation
  Lung Lesion                Nodule, Mass
  Edema                      Pulmonary Edema, Pulmonary Congestion
  Consolidation              Consolidation
  Pneumonia                  Pneumonia
  Atelectasis                Pulmonary Atelectasis
  Pneumothorax               Pneumothorax, Hydropneumothorax, Hemopneumothorax
  Pleural Effusion           Pleural Effusion, Hydropneumothorax
  Fracture                   Fractures, Bone
  Support Devices            Catheters, Indwelling; Surgical Instruments; Implanted Medical Device;
                             Tube, Inserted; Medical Device; Stents
Enlarged Cardiomediastinum and Pleural Other have no clean MeSH counterpart and are not scored.
Studies indexed "No Indexing" are left out. A labeler prediction counts as positive when it is
positive, or (``uncertain_as_positive``, the default, since the indexers annotate hedged
findings) uncertain.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import labeler

MESH_TO_OBSERVATIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Opacity": ("Lung Opacity",),
    "Airspace Disease": ("Lung Opacity",),
    "Infiltrate": ("Lung Opacity",),
    "Consolidation": ("Consolidation", "Lung Opacity"),
    "Nodule": ("Lung Lesion",),
    "Mass": ("Lung Lesion",),
    "Pulmonary Edema": ("Edema",),
    "Pulmonary Congestion": ("Edema",),
    "Pneumonia": ("Pneumonia",),
    "Pulmonary Atelectasis": ("Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "Hemopneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Pleural Effusion",),
    "Fractures, Bone": ("Fracture",),
    "Catheters, Indwelling": ("Support Devices",),
    "Surgical Instruments": ("Support Devices",),
    "Implanted Medical Device": ("Support Devices",),
    "Tube, Inserted": ("Support Devices",),
    "Medical Device": ("Support Devices",),
    "Stents": ("Support Devices",),
}
SCORED: tuple[str, ...] = (
    "No Finding", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture", "Support Devices",
)


def mesh_reference(problems: str) -> np.ndarray:
    """``Problems`` cell -> bool [14]: observations the indexers marked present."""
    terms = [t.strip() for t in problems.split(";") if t.strip()]
    ref = np.zeros((L.NUM_OBSERVATIONS,), bool)
    if terms == ["normal"]:
        ref[L.INDEX["No Finding"]] = True
    for term in terms:
        for observation in MESH_TO_OBSERVATIONS.get(term, ()):
            ref[L.INDEX[observation]] = True
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
    ref = np.stack([mesh_reference(r["Problems"]) for r in rows])
    table = {}
    for name in SCORED:
        i = L.INDEX[name]
        tp = int((pred[:, i] & ref[:, i]).sum())
        fp = int((pred[:, i] & ~ref[:, i]).sum())
        fn = int((~pred[:, i] & ref[:, i]).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[name] = {"precision": precision, "recall": recall, "f1": f1,
                       "tp": tp, "fp": fp, "fn": fn, "support": tp + fn, "studies": len(rows)}
    return table

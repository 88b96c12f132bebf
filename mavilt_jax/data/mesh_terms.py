"""IU X-ray MeSH indexing -> the 14 CheXpert observations: the one map used everywhere.

The Open-i indexers annotated each IU X-ray report with MeSH-based terms "Head/qualifier/...",
e.g. "Opacity/lung/base/left" or "Cardiac Shadow/enlarged" (XML ``<MeSH><major>``, the ``MeSH``
column of indiana_reports.csv; the ``Problems`` column holds the heads). They list findings that
are present (hedged ones included), never ruled-out ones. This map gives the IU X-ray builder its
labels and the labeler benchmark its reference (``evaluation/iu_mesh.py``):

  No Finding                 "normal"
  Enlarged Cardiomediastinum Mediastinum/enlarged, Mediastinum/prominent
  Cardiomegaly               Cardiomegaly; Cardiac Shadow/enlarged
  Lung Opacity               Opacity, Airspace Disease, Infiltrate, Consolidation; Density/lung
  Lung Lesion                Nodule, Mass; Opacity or Density qualified "round" or "nodular"
                             ("Density/lung/hilum/left/round")
  Edema                      Pulmonary Edema, Pulmonary Congestion
  Consolidation              Consolidation
  Pneumonia                  Pneumonia
  Atelectasis                Pulmonary Atelectasis
  Pneumothorax               Pneumothorax, Hydropneumothorax, Hemopneumothorax
  Pleural Effusion           Pleural Effusion, Hydropneumothorax
  Pleural Other              Thickening/pleura
  Fracture                   Fractures, Bone
  Support Devices            Catheters, Indwelling; Surgical Instruments; Implanted Medical Device;
                             Tube, Inserted; Medical Device; Stents

Chosen after CheXpert's own mention phrases: vascular congestion counts as edema, consolidation is
also a lung opacity, a round or nodular density is a lesion. Terms with no CheXpert counterpart map
to nothing: calcified granulomas (calcified nodules are healed granulomas, not lesions), sutures,
spine degeneration. Matching ignores case; a qualified entry needs its head and that qualifier
anywhere after it.

Cavitation maps to nothing. CheXpert counts a "cavitary lesion" as Lung Lesion but not a bare
cavity, and IU X-ray indexes "Cavitation" mostly for stable post-tuberculous cavities; cavitating
nodules and masses are indexed "Nodule" or "Mass" as well, so they stay lesions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mavilt_jax.data import labels as labels_lib

# MeSH heads (lower case) -> observations, POSITIVE whenever the head is indexed.
MESH_HEAD_TO_OBSERVATIONS: dict[str, tuple[str, ...]] = {
    "normal": ("No Finding",),
    "cardiomegaly": ("Cardiomegaly",),
    "opacity": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "pulmonary edema": ("Edema",),
    "pulmonary congestion": ("Edema",),
    "pneumonia": ("Pneumonia",),
    "pulmonary atelectasis": ("Atelectasis",),
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "hemopneumothorax": ("Pneumothorax",),
    "pleural effusion": ("Pleural Effusion",),
    "fractures, bone": ("Fracture",),
    "catheters, indwelling": ("Support Devices",),
    "surgical instruments": ("Support Devices",),
    "implanted medical device": ("Support Devices",),
    "tube, inserted": ("Support Devices",),
    "medical device": ("Support Devices",),
    "stents": ("Support Devices",),
}
# (head, qualifier) pairs whose meaning depends on the qualifier ("Cardiac Shadow/enlarged").
MESH_QUALIFIED_TO_OBSERVATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("cardiac shadow", "enlarged"): ("Cardiomegaly",),
    ("mediastinum", "enlarged"): ("Enlarged Cardiomediastinum",),
    ("mediastinum", "prominent"): ("Enlarged Cardiomediastinum",),
    ("thickening", "pleura"): ("Pleural Other",),
    ("density", "lung"): ("Lung Opacity",),
    ("opacity", "round"): ("Lung Lesion",),
    ("opacity", "nodular"): ("Lung Lesion",),
    ("density", "round"): ("Lung Lesion",),
    ("density", "nodular"): ("Lung Lesion",),
}
# Terms that mean the study was not indexed: labels stay ABSENT.
MESH_NOT_INDEXED = frozenset({"no indexing"})


def mesh_problems(mesh_terms: Iterable[str]) -> tuple[str, ...]:
    """"Head/qualifier/..." MeSH terms -> their heads ("Opacity/lung/apex/left" -> "Opacity")."""
    return tuple(term.split("/")[0].strip() for term in mesh_terms if term.strip())


def mesh_observations(mesh_terms: Iterable[str]) -> set[str]:
    """The observations that MeSH terms (full "Head/qualifier" terms or bare heads) mark present."""
    found: set[str] = set()
    for term in mesh_terms:
        parts = [p.strip().lower() for p in term.split("/") if p.strip()]
        if not parts or parts[0] in MESH_NOT_INDEXED:
            continue
        head, qualifiers = parts[0], parts[1:]
        found.update(MESH_HEAD_TO_OBSERVATIONS.get(head, ()))
        for qualifier in qualifiers:
            found.update(MESH_QUALIFIED_TO_OBSERVATIONS.get((head, qualifier), ()))
    return found


def labels_from_mesh(mesh_terms: Iterable[str]) -> np.ndarray:
    """IU X-ray MeSH terms (full "Head/qualifier" terms or bare heads) -> CheXpert labels int8 [14].

    Mapped observations are POSITIVE; everything else stays ABSENT (MeSH indexing lists what is
    present, never what is ruled out). "normal" sets No Finding. As in CheXpert, No Finding is
    withdrawn when any pathology (anything except Support Devices) is positive.
    """
    out = np.full((labels_lib.NUM_OBSERVATIONS,), labels_lib.ABSENT, np.int8)
    for name in mesh_observations(mesh_terms):
        out[labels_lib.INDEX[name]] = labels_lib.POSITIVE
    pathologies = [i for name, i in labels_lib.INDEX.items() if name not in ("No Finding", "Support Devices")]
    if np.any(out[pathologies] == labels_lib.POSITIVE):
        out[labels_lib.INDEX["No Finding"]] = labels_lib.ABSENT
    return out

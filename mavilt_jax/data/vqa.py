"""Visual question answering pairs about chest radiographs.

Two sources:

- ``vqa_from_findings``: from a synthetic study's structured findings (what the image shows):
  presence (yes/no, balanced within each study), laterality, size or severity, location, and
  "which abnormalities are present".
- ``vqa_from_labels``: from a 14-observation CheXpert label vector alone (e.g. a rule labeler's
  output on a real report): presence and "which abnormalities are present".

Every pair is a dict with ``question``, ``answer``, ``answer_type`` ("closed" for yes/no,
"open" otherwise) and ``question_type`` (presence, normality, laterality, severity, location,
abnormality). Answers are lower-case and canonical so that exact-match accuracy is meaningful;
the "which abnormalities" answer lists observation names in the fixed CheXpert order, or "none".
"""

from __future__ import annotations

import numpy as np

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data.findings import Findings, finding_states

QUESTION_TYPES = ("presence", "normality", "laterality", "severity", "location", "abnormality")

# Presence questions per CheXpert observation (No Finding is asked as "normality").
PRESENCE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("Is the cardiomediastinal silhouette enlarged?", "Is the mediastinum widened?"),
    "Cardiomegaly": ("Is there cardiomegaly?", "Is the heart enlarged?", "Does the patient have cardiomegaly?"),
    "Lung Opacity": ("Is there a lung opacity?", "Is there an opacity in the lungs?"),
    "Lung Lesion": ("Is there a lung nodule or mass?", "Is there a pulmonary lesion?"),
    "Edema": ("Is there pulmonary edema?", "Are there signs of pulmonary edema?"),
    "Consolidation": ("Is there consolidation?", "Is there any consolidation in the lungs?"),
    "Pneumonia": ("Is there evidence of pneumonia?", "Does the image suggest pneumonia?"),
    "Atelectasis": ("Is there atelectasis?", "Is any atelectasis present?"),
    "Pneumothorax": ("Is there a pneumothorax?", "Is a pneumothorax present?"),
    "Pleural Effusion": ("Is there a pleural effusion?", "Is there fluid in the pleural space?"),
    "Pleural Other": ("Is there any other pleural abnormality?",),
    "Fracture": ("Is there a fracture?", "Is any bone fractured?"),
    "Support Devices": ("Is there a support device?", "Are any tubes or lines present?"),
}
NORMALITY_QUESTIONS = ("Is this chest radiograph normal?", "Is this a normal study?")
ABNORMALITY_QUESTIONS = ("Which abnormalities are present?", "What findings are seen in this image?")

# Observations a synthetic image can show, with the Findings attribute that makes them present.
_IMAGE_OBSERVATIONS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Opacity",
                       "Consolidation", "Lung Lesion", "Edema", "Atelectasis", "Fracture", "Support Devices")
# A "no" about these would be doubtful next to the listed findings (they look alike on a film).
_LOOKALIKES = {
    "Lung Opacity": ("Consolidation", "Edema", "Atelectasis", "Lung Lesion"),
    "Consolidation": ("Lung Opacity", "Edema"),
}


def _pair(question: str, answer: str, question_type: str) -> dict[str, str]:
    closed = answer in ("yes", "no")
    return {"question": question, "answer": answer, "answer_type": "closed" if closed else "open",
            "question_type": question_type}


def abnormality_answer(names) -> str:
    """Canonical answer listing observation names in CheXpert order, or 'none'."""
    ordered = [n for n in labels_lib.OBSERVATIONS if n in set(names)]
    return ", ".join(n.lower() for n in ordered) if ordered else "none"


def _balanced_presence(yes: list[str], no: list[str], rng: np.random.Generator, max_each: int = 2) -> list[dict[str, str]]:
    """As many "yes" as "no" presence/normality questions; yes/no names are observations."""
    k = min(len(yes), len(no), max_each)
    chosen = [(n, "yes") for n in rng.permutation(yes)[:k]] + [(n, "no") for n in rng.permutation(no)[:k]]
    out = []
    for name, answer in chosen:
        name = str(name)
        if name == "No Finding":
            out.append(_pair(str(rng.choice(NORMALITY_QUESTIONS)), answer, "normality"))
        else:
            out.append(_pair(str(rng.choice(PRESENCE_QUESTIONS[name])), answer, "presence"))
    return [out[i] for i in rng.permutation(len(out))]


def vqa_from_findings(findings: Findings, rng: np.random.Generator) -> list[dict[str, str]]:
    """VQA pairs answered by what the synthetic image shows.

    Hedged findings are present in the image but reported as uncertain; they are neither asked
    about for presence nor listed as abnormalities.
    """
    states = finding_states(findings)
    certain = [n for n, v in states.items() if v == labels_lib.POSITIVE]
    present = set(states)
    yes = [n for n in _IMAGE_OBSERVATIONS if n in certain]
    no = [n for n in _IMAGE_OBSERVATIONS if n not in present
          and not any(other in present for other in _LOOKALIKES.get(n, ()))]
    if findings.is_normal:
        yes.append("No Finding")
    elif not any(v == labels_lib.UNCERTAIN for v in states.values()):
        no.append("No Finding")
    out = _balanced_presence(yes, no, rng)

    f = findings
    side_q = {
        "effusion": ("Which side is the pleural effusion on?", "On which side is the pleural effusion?"),
        "pneumothorax": ("Which side is the pneumothorax on?", "On which side is the pneumothorax?"),
        "opacity": ("Which lung is affected by the {k}?",),
        "nodule": ("Which lung contains the {k}?",),
        "atelectasis": ("Which side shows atelectasis?",),
        "fracture": ("Which side is the rib fracture on?",),
    }
    for name, questions in side_q.items():
        item = getattr(f, name)
        if item is not None and not item.hedged:
            kind = getattr(item, "kind", name)
            out.append(_pair(str(rng.choice(questions)).format(k=kind), item.side, "laterality"))
    if f.effusion and not f.effusion.hedged:
        out.append(_pair("How large is the pleural effusion?", f.effusion.size, "severity"))
    if f.pneumothorax and not f.pneumothorax.hedged:
        out.append(_pair("How large is the pneumothorax?", f.pneumothorax.size, "severity"))
    if f.cardiomegaly and not f.cardiomegaly.hedged:
        out.append(_pair("How severe is the cardiomegaly?", f.cardiomegaly.severity, "severity"))
    if f.edema and not f.edema.hedged:
        out.append(_pair("How severe is the pulmonary edema?", f.edema.severity, "severity"))
    if f.nodule and not f.nodule.hedged:
        out.append(_pair("Is the lung lesion a nodule or a mass?", f.nodule.kind, "severity"))
        out.append(_pair(f"Where is the {f.nodule.kind} located?", f"{f.nodule.side} {f.nodule.zone} zone", "location"))
    if f.fracture and not f.fracture.hedged:
        out.append(_pair("Is the rib fracture acute or healed?", "healed" if f.fracture.healed else "acute", "severity"))
    if f.opacity and not f.opacity.hedged and f.opacity.side != "bilateral":
        out.append(_pair(f"In which lung zone is the {f.opacity.kind}?", f.opacity.zone, "location"))
    listed = [n for n in certain if n != "Support Devices"]
    if not any(v == labels_lib.UNCERTAIN for v in states.values()):
        out.append(_pair(str(rng.choice(ABNORMALITY_QUESTIONS)), abnormality_answer(listed), "abnormality"))
    return out


def vqa_from_labels(labels: np.ndarray, rng: np.random.Generator) -> list[dict[str, str]]:
    """Presence, normality and "which abnormalities" pairs from a 14-label vector.

    Positive observations answer "yes"; negative ones answer "no" (absent ones only when the
    report negates nothing, since an unmentioned finding is usually, not surely, absent);
    uncertain ones are never asked. As many "yes" as "no" questions are asked.
    """
    labels = np.asarray(labels)
    if labels.shape != (labels_lib.NUM_OBSERVATIONS,):
        raise ValueError(f"labels must have shape ({labels_lib.NUM_OBSERVATIONS},), got {labels.shape}")
    names = labels_lib.OBSERVATIONS
    yes = [n for n, v in zip(names, labels) if v == labels_lib.POSITIVE]
    no = [n for n, v in zip(names, labels) if v == labels_lib.NEGATIVE and n != "No Finding"]
    if not no:
        no = [n for n, v in zip(names, labels) if v == labels_lib.ABSENT and n not in ("No Finding", "Pleural Other")]
    has_uncertain = bool((labels == labels_lib.UNCERTAIN).any())
    positive_pathology = [n for n in yes if n not in ("No Finding", "Support Devices")]
    if "No Finding" not in yes and positive_pathology:
        no.append("No Finding")
    out = _balanced_presence(yes, no, rng)
    if not has_uncertain:
        out.append(_pair(str(rng.choice(ABNORMALITY_QUESTIONS)), abnormality_answer(positive_pathology), "abnormality"))
    return out

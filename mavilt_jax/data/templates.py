"""Task-adaptive instruction templates for stage 2 (Eq. 8-10).

Each task has many paraphrased instructions so that the model learns the task and not one
wording: training samples one per example (``split="train"``), evaluation uses a fixed, disjoint
held-out set (``split="eval"``) so that a score also measures robustness to unseen phrasings.

The training wordings are a few hand-written ones plus compositions (verb x object x target for
the report tasks; a prefix and a suffix around the question for VQA). Why: with a handful of
distinctive wordings per task a model keys the task on the wording rather than on its content
words, and a held-out wording lands on the nearest training one ("Please dictate the report ..."
answered as an impression, because "State the conclusion of the report ..." was the nearest).
The VQA prefixes and suffixes are shared by every question type, so the answer's form (yes/no,
a side, a size, a zone) has to come from the question itself.

Tasks (Eq. 8: report generation, Eq. 9: report -> image, Eq. 10: VQA):
  "report"           the full report (findings and impression) of the image
  "findings"         the FINDINGS section only
  "impression"       the IMPRESSION section only
  "report_to_image"  a radiograph for a report; the text holds ``{report}``
  "vqa"              an answer to ``{question}``, worded per question type (``VQA_TYPES``, the
                     ``question_type`` of `mavilt_jax.data.vqa`); an unknown type uses the
                     generic wording.

The image of the image-conditioned tasks is placed by `mavilt_jax.data.sequences` before the
instruction, so the templates hold only words.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TASKS: tuple[str, ...] = ("report", "findings", "impression", "report_to_image", "vqa")
VQA_TYPES: tuple[str, ...] = ("presence", "normality", "laterality", "severity", "location", "abnormality")
_GENERIC = "generic"


@dataclasses.dataclass(frozen=True)
class Template:
    """One instruction wording. ``text`` may hold ``{report}`` or ``{question}``."""

    task: str
    text: str

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


def _compose(*parts: tuple[str, ...]) -> tuple[str, ...]:
    """Every concatenation of one string from each part, in order (the last part varies fastest)."""
    out = [""]
    for part in parts:
        out = [a + b for a in out for b in part]
    return tuple(out)


def _unique(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for group in groups for w in group))


_VERBS = ("Write", "Provide", "Generate", "Give", "Prepare", "Compose")
_ON_IMAGE = (" for this chest X-ray.", " of this chest radiograph.", " for the image.")
_IMAGE_KINDS = ("a chest X-ray", "a frontal chest radiograph", "the chest image")
_TO_REPORT = (" that matches this report: {report}", " for this report: {report}", " consistent with this report: {report}")
# VQA wording around the question, shared by every question type.
_VQA_PREFIXES = ("", "Look at the chest X-ray. ", "Review the chest film. ", "Examine this radiograph. ",
                 "Regarding this image: ", "Question about the study: ", "Read the radiograph. ")
_VQA_SUFFIXES = ("", " Be brief.", " Answer concisely.", " Keep it short.")
_VQA_SHARED = _compose(_VQA_PREFIXES, ("{question}",), _VQA_SUFFIXES)

# (train wordings, held-out eval wordings) per task.
_REPORT = (
    (
        "Write the radiology report for this chest X-ray.",
        "Describe the findings and give an impression for this chest radiograph.",
        "Generate a full report (findings and impression) for the image.",
        "You are a radiologist. Report on this chest film.",
        "Provide a complete radiology report for this frontal chest radiograph.",
        "What does this chest X-ray show? Answer as a radiology report.",
    ) + _compose(_VERBS, (" the full radiology report", " a complete report (findings and impression)",
                          " the radiology report"), _ON_IMAGE),
    (
        "Please dictate the report for this chest radiograph.",
        "Produce the radiologist's report of this chest image.",
    ),
)
_FINDINGS = (
    (
        "Describe the findings of this chest X-ray.",
        "Write the FINDINGS section for this radiograph.",
        "List the radiographic findings in this chest image.",
        "What are the findings on this chest film?",
        "Report only the findings of this chest radiograph.",
    ) + _compose(_VERBS, (" the FINDINGS section", " the findings", " only the findings"), _ON_IMAGE),
    (
        "Give the findings section of the report for this image.",
        "Detail what is seen on this chest radiograph.",
    ),
)
_IMPRESSION = (
    (
        "Give the impression for this chest X-ray.",
        "Write the IMPRESSION section for this radiograph.",
        "Summarise this chest radiograph in a short impression.",
        "What is your overall impression of this chest film?",
        "State the conclusion of the report for this image.",
    ) + _compose(_VERBS, (" the IMPRESSION section", " the impression", " a short impression"), _ON_IMAGE),
    (
        "Provide a one-line impression of this chest radiograph.",
        "What is the diagnostic impression of this study?",
    ),
)
_REPORT_TO_IMAGE = (
    (
        "Generate a chest X-ray that matches this report: {report}",
        "Create a chest radiograph consistent with the following findings. {report}",
        "Report: {report} Produce the corresponding chest X-ray.",
        "Synthesise a frontal chest radiograph for this report: {report}",
        "Draw the chest X-ray described here: {report}",
    ) + _compose(("Generate ", "Create ", "Synthesise ", "Produce ", "Draw ", "Make "), _IMAGE_KINDS, _TO_REPORT),
    (
        "Render a chest radiograph showing the following: {report}",
        "Here is a radiology report: {report} Generate the image it describes.",
    ),
)
_VQA = {
    "presence": (
        ("{question} Answer yes or no.", "Answer with yes or no. {question}", "Look at the chest X-ray. {question}",
         "{question} Reply yes or no."),
        ("Based on the radiograph, answer yes or no: {question}",),
    ),
    "normality": (
        ("{question} Answer yes or no.", "Answer with yes or no. {question}", "Review the chest film. {question}"),
        ("Based on this image, answer yes or no: {question}",),
    ),
    "laterality": (
        ("{question} Answer left, right or bilateral.", "Which side? {question}", "{question} Give the side."),
        ("Looking at the radiograph, which side is affected? {question}",),
    ),
    "severity": (
        ("{question} Answer with the size or severity.", "Grade the finding. {question}", "{question} Be brief."),
        ("Assess the extent on this chest X-ray. {question}",),
    ),
    "location": (
        ("{question} Name the location.", "Where is it? {question}", "{question} Answer with the lung zone."),
        ("Using the chest radiograph, localise the finding. {question}",),
    ),
    "abnormality": (
        ("{question} List the abnormalities, or answer none.", "{question}", "Read the chest X-ray. {question}"),
        ("Name every abnormality you see, or say none. {question}",),
    ),
    _GENERIC: (
        ("{question}", "Answer the question about this chest X-ray. {question}", "Question: {question}"),
        ("Answer briefly about the radiograph. {question}",),
    ),
}
_VQA = {kind: (_unique(train, _VQA_SHARED), held_out) for kind, (train, held_out) in _VQA.items()}
_TEXT = {task: (_unique(train), held_out) for task, (train, held_out) in (
    ("report", _REPORT), ("findings", _FINDINGS), ("impression", _IMPRESSION), ("report_to_image", _REPORT_TO_IMAGE))}


def templates(task: str, split: str = "train", question_type: str | None = None) -> tuple[Template, ...]:
    """The instruction wordings of ``task`` for ``split`` ("train" or "eval")."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}; expected 'train' or 'eval'")
    index = 0 if split == "train" else 1
    if task == "vqa":
        wordings = _VQA.get(question_type or _GENERIC, _VQA[_GENERIC])[index]
    elif task in _TEXT:
        wordings = _TEXT[task][index]
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return tuple(Template(task, text) for text in wordings)


def sample_template(
    task: str, rng: np.random.Generator, split: str = "train", question_type: str | None = None,
) -> Template:
    """One wording drawn uniformly with ``rng`` (training draws a new one per example)."""
    choices = templates(task, split, question_type)
    return choices[int(rng.integers(len(choices)))]


def default_template(task: str, question_type: str | None = None) -> Template:
    """The deterministic wording for inference and evaluation: the first held-out one."""
    return templates(task, "eval", question_type)[0]


def fixed_template(task: str) -> Template:
    """The one wording of a task when instructions are not task-adaptive (the ablation): the first
    training wording, and the generic one for every VQA question type."""
    return templates(task, "train", None)[0]

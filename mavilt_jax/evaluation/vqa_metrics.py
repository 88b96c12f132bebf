"""VQA metrics (Table III): exact-match accuracy after answer normalisation, overall and per
question/answer type, and AUROC of yes/no questions from the probability of "yes".

Normalisation: lower-case, punctuation and the articles a/an/the removed, whitespace collapsed;
list answers ("cardiomegaly, pleural effusion") are compared as sets of items split on commas
and "and", so the order of a listed answer does not matter.

AUROC is rank-based (the Mann-Whitney U statistic divided by n_pos * n_neg), with tied scores
given their average rank, i.e. a tie between a positive and a negative counts one half.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

_PUNCT = re.compile(f"[{re.escape(string.punctuation.replace(',', ''))}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(answer: str) -> str:
    """Canonical form of an answer string (see module docstring)."""
    text = _PUNCT.sub(" ", str(answer).lower())
    text = _ARTICLES.sub(" ", text)
    items = [" ".join(item.split()) for item in re.split(r",|\band\b", text)]
    items = sorted(item for item in items if item)
    return ", ".join(items)


def answers_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def auroc(scores: Sequence[float], targets: Sequence[int | bool]) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be equal 1-D shapes")
    n_pos = int(targets.sum())
    n_neg = int(targets.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    u = ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def vqa_metrics(records: Iterable[Mapping]) -> dict[str, float | int]:
    """Accuracy overall / per question type / per answer type, and yes/no AUROC.

    Each record holds ``answer`` (reference), ``prediction`` (generated answer), optional
    ``question_type``, ``answer_type`` and ``p_yes`` (model probability of answering "yes").
    """
    records = list(records)
    if not records:
        raise ValueError("no VQA records")
    correct = np.array([answers_match(r["prediction"], r["answer"]) for r in records])
    out: dict[str, float | int] = {"accuracy": float(correct.mean()), "n": len(records)}
    for key in ("question_type", "answer_type"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for r, c in zip(records, correct):
            if r.get(key):
                groups[r[key]].append(bool(c))
        for name, values in sorted(groups.items()):
            out[f"accuracy/{key}/{name}"] = float(np.mean(values))
            out[f"n/{key}/{name}"] = len(values)
    yes_no = [r for r in records
              if normalize_answer(r["answer"]) in ("yes", "no") and r.get("p_yes") is not None]
    if yes_no:
        out["auroc_yes_no"] = auroc([float(r["p_yes"]) for r in yes_no],
                                    [normalize_answer(r["answer"]) == "yes" for r in yes_no])
        out["n/auroc_yes_no"] = len(yes_no)
    return out

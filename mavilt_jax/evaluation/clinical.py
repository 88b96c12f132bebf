"""Clinical efficacy (CE) of generated reports: the labeler's findings in the generation vs in
the reference, as precision / recall / F1 (Table I).

Conventions (stated on the report card):
  * both reports are labelled by the same labeler (:mod:`mavilt_jax.evaluation.labeler`);
  * blank (not mentioned) -> negative, the usual CE convention;
  * uncertain -> positive (default; as in R2Gen-style CE), negative, or ``ignore`` (a study's
    cell is left out of that observation's counts when either side is uncertain);
  * micro averages pool TP/FP/FN over the observations; macro averages are the unweighted mean of
    the per-observation precision, recall and F1 (as scikit-learn's ``average="macro"``); a
    ratio with a zero denominator is 0;
  * reported over all 14 observations and over the 5 of ``labels.TOP5``.
Counts are kept per study so that the bootstrap can resample studies and re-aggregate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mavilt_jax.data import labels as L

UncertainPolicy = Literal["positive", "negative", "ignore"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("positive", "negative", "ignore")


@dataclasses.dataclass(frozen=True)
class CECounts:
    """Per-study, per-observation confusion indicators; each bool [N, K]."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    observations: tuple[str, ...]

    def take(self, idx: np.ndarray) -> CECounts:
        return CECounts(self.tp[idx], self.fp[idx], self.fn[idx], self.observations)


def binarise(states: np.ndarray, uncertain: str) -> np.ndarray:
    """Positive findings, bool, of label states; uncertain ones too under the "positive" policy."""
    positive = states == L.POSITIVE
    if uncertain == "positive":
        positive |= states == L.UNCERTAIN
    return positive


def ce_counts(reference: np.ndarray, generated: np.ndarray, uncertain: UncertainPolicy = "positive",
              observations: Sequence[str] = L.OBSERVATIONS) -> CECounts:
    """TP/FP/FN indicators from label vectors int [N, 14] of references and generations."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    reference, generated = np.asarray(reference), np.asarray(generated)
    if reference.shape != generated.shape or reference.ndim != 2 or reference.shape[1] != L.NUM_OBSERVATIONS:
        raise ValueError(f"expected two [N, {L.NUM_OBSERVATIONS}] label arrays, got {reference.shape} and {generated.shape}")
    cols = [L.INDEX[name] for name in observations]
    ref, gen = reference[:, cols], generated[:, cols]
    ref_pos, gen_pos = binarise(ref, uncertain), binarise(gen, uncertain)
    keep = np.ones_like(ref_pos)
    if uncertain == "ignore":
        keep = (ref != L.UNCERTAIN) & (gen != L.UNCERTAIN)
    return CECounts(tp=ref_pos & gen_pos & keep, fp=~ref_pos & gen_pos & keep,
                    fn=ref_pos & ~gen_pos & keep, observations=tuple(observations))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def ce_from_counts(counts: CECounts) -> dict[str, float]:
    """Micro/macro precision, recall, F1 and per-observation F1 from (resampled) counts."""
    tp, fp, fn = counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    micro_p = float(_ratio(tp.sum(), tp.sum() + fp.sum()))
    micro_r = float(_ratio(tp.sum(), tp.sum() + fn.sum()))
    out = {
        "precision_micro": micro_p,
        "recall_micro": micro_r,
        "f1_micro": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
    }
    for name, value in zip(counts.observations, f1):
        out[f"f1/{name}"] = float(value)
    return out


def clinical_efficacy(reference: np.ndarray, generated: np.ndarray,
                      uncertain: UncertainPolicy = "positive") -> dict[str, float]:
    """CE over the 14 observations (keys ``*_micro``, ``*_macro``, ``f1/<name>``) and over TOP5
    (the same keys prefixed ``top5/``)."""
    out = ce_from_counts(ce_counts(reference, generated, uncertain))
    top5 = ce_from_counts(ce_counts(reference, generated, uncertain, L.TOP5))
    out.update({f"top5/{k}": v for k, v in top5.items() if not k.startswith("f1/")})
    return out

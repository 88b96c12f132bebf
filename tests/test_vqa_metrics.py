"""VQA accuracy and yes/no AUROC; conditional correctness, which uses the same AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import conditional, vqa_metrics


def _pairwise_auroc(scores, targets) -> float:
    """The definition: P(score_pos > score_neg) + 0.5 P(tie), over all pairs (slow, simple)."""
    pos = [s for s, t in zip(scores, targets) if t]
    neg = [s for s, t in zip(scores, targets) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_example_with_ties():
    scores = [0.9, 0.5, 0.5, 0.2, 0.5]
    targets = [1, 1, 0, 0, 0]
    # Positive 0.9 beats all three negatives (3); positive 0.5 ties two negatives (2 x 0.5) and
    # beats 0.2 (1): 5 of 6 pairs.
    assert vqa_metrics.auroc(scores, targets) == pytest.approx(5 / 6)
    assert np.isnan(vqa_metrics.auroc([0.1, 0.2], [1, 1]))


def test_auroc_matches_pairwise_definition_and_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=300) / 5.0  # many ties
    targets = rng.random(300) < 0.4
    ours = vqa_metrics.auroc(scores, targets)
    assert ours == pytest.approx(_pairwise_auroc(scores, targets), abs=1e-12)
    metrics = pytest.importorskip("sklearn.metrics")
    assert ours == pytest.approx(metrics.roc_auc_score(targets, scores), abs=1e-12)


def test_normalisation():
    assert vqa_metrics.normalize_answer(" Yes. ") == "yes"
    assert vqa_metrics.normalize_answer("The left lung") == "left lung"
    assert vqa_metrics.answers_match("pleural effusion, cardiomegaly", "Cardiomegaly and pleural effusion")
    assert not vqa_metrics.answers_match("cardiomegaly", "cardiomegaly, edema")


def test_vqa_metrics_hand_example():
    records = [
        {"answer": "yes", "prediction": "Yes", "p_yes": 0.8, "question_type": "presence", "answer_type": "closed"},
        {"answer": "no", "prediction": "yes", "p_yes": 0.6, "question_type": "presence", "answer_type": "closed"},
        {"answer": "no", "prediction": "no", "p_yes": 0.1, "question_type": "normality", "answer_type": "closed"},
        {"answer": "left", "prediction": "right", "question_type": "laterality", "answer_type": "open"},
    ]
    out = vqa_metrics.vqa_metrics(records)
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["accuracy/question_type/presence"] == pytest.approx(1 / 2)
    assert out["accuracy/question_type/normality"] == 1.0
    assert out["accuracy/answer_type/open"] == 0.0
    assert out["n/question_type/laterality"] == 1
    # yes/no AUROC: the one "yes" (0.8) outranks both "no" (0.6, 0.1).
    assert out["auroc_yes_no"] == 1.0 and out["n/auroc_yes_no"] == 3


def test_conditional_correctness():
    n = L.NUM_OBSERVATIONS
    requested = np.full((4, n), L.ABSENT, np.int8)
    probs = np.full((4, n), 0.1)
    c = L.INDEX["Cardiomegaly"]
    requested[:, c] = [L.POSITIVE, L.POSITIVE, L.NEGATIVE, L.UNCERTAIN]
    probs[:, c] = [0.9, 0.3, 0.4, 0.99]
    out = conditional.conditional_correctness(probs, requested)
    # Uncertain request left out: scores (0.9, 0.3) positive vs 0.4 negative -> AUROC 1/2;
    # at 0.5: 0.9 correct, 0.3 wrong, 0.4 correct -> 2/3.
    assert out["n/Cardiomegaly"] == 3
    assert out["auroc/Cardiomegaly"] == pytest.approx(0.5)
    assert out["accuracy/Cardiomegaly"] == pytest.approx(2 / 3)
    # Findings never requested have no AUROC; only Cardiomegaly enters the macro mean.
    assert "auroc/Edema" not in out and out["findings_scored"] == 1
    assert out["auroc_macro"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="probabilities"):
        conditional.conditional_correctness(probs[:, :3], requested)

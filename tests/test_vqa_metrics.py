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


def test_real_iu_vqa_follows_the_labeler(shared_data):
    import csv

    from mavilt_jax.data import vqa as vqa_lib
    from mavilt_jax.evaluation import labeler, real_vqa
    from mavilt_jax.evaluation.iu_mesh import report_text

    iu = shared_data / "iu_xray"
    items = real_vqa.build_iu_vqa(iu / "indiana_reports.csv", split="test")
    split = real_vqa.read_split(iu / "r2gen_split.csv")
    studies = {i["study_id"] for i in items}
    # Nearly all of R2Gen's 590 test studies get questions, and only test studies do.
    assert 550 <= len(studies) <= 590 and all(split[s] == "test" for s in studies)
    with open(iu / "indiana_reports.csv", newline="") as f:
        text = {r["uid"]: report_text(r) for r in csv.DictReader(f)}
    question_to_observation = {q: name for name, qs in vqa_lib.PRESENCE_QUESTIONS.items() for q in qs}
    by_uid = {}
    for item in items:
        assert set(item) == {"study_id", "uid", "question", "answer", "answer_type", "question_type"}
        vec = by_uid.setdefault(item["uid"], labeler.label_report(text[item["uid"]]))
        if item["question_type"] == "presence":
            state = int(vec[L.INDEX[question_to_observation[item["question"]]]])
            assert (item["answer"] == "yes") == (state == L.POSITIVE)
            assert state != L.UNCERTAIN
        elif item["question_type"] == "normality":
            assert (item["answer"] == "yes") == (int(vec[L.INDEX["No Finding"]]) == L.POSITIVE)
    # Deterministic per (seed, uid).
    assert real_vqa.build_iu_vqa(iu / "indiana_reports.csv", split="test")[:20] == items[:20]
    with pytest.raises(ValueError, match="split"):
        real_vqa.build_iu_vqa(iu / "indiana_reports.csv", split="holdout")

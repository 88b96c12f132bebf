"""Clinical efficacy: a hand-computed example and scikit-learn on random label arrays."""

from __future__ import annotations

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import clinical

P, N, U, B = L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT


def _vec(**states) -> np.ndarray:
    v = np.full((L.NUM_OBSERVATIONS,), B, np.int8)
    for name, s in states.items():
        v[L.INDEX[name.replace("_", " ")]] = s
    return v


def test_hand_example():
    # Study 1: Cardiomegaly TP, Edema FP.  Study 2: Cardiomegaly FN; Atelectasis uncertain in the
    # reference and positive in the generation.
    ref = np.stack([_vec(Cardiomegaly=P), _vec(Cardiomegaly=P, Atelectasis=U)])
    gen = np.stack([_vec(Cardiomegaly=P, Edema=P), _vec(Atelectasis=P)])
    # uncertain -> positive: TP = {Cardiomegaly s1, Atelectasis s2}, FP = {Edema s1}, FN = {Cardiomegaly s2}
    out = clinical.clinical_efficacy(ref, gen, "positive")
    assert out["precision_micro"] == pytest.approx(2 / 3)
    assert out["recall_micro"] == pytest.approx(2 / 3)
    assert out["f1_micro"] == pytest.approx(2 / 3)
    assert out["f1/Cardiomegaly"] == pytest.approx(2 / 3)
    assert out["f1/Atelectasis"] == pytest.approx(1.0)
    assert out["f1/Edema"] == 0.0
    # Macro over 14: F1 sums 2/3 + 1 over 14 observations.
    assert out["f1_macro"] == pytest.approx((2 / 3 + 1) / 14)
    # TOP5 = Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion: same counts here.
    assert out["top5/f1_micro"] == pytest.approx(2 / 3)
    assert out["top5/f1_macro"] == pytest.approx((2 / 3 + 1) / 5)
    # uncertain -> negative: Atelectasis s2 becomes an FP.
    neg = clinical.clinical_efficacy(ref, gen, "negative")
    assert neg["precision_micro"] == pytest.approx(1 / 3)
    assert neg["recall_micro"] == pytest.approx(1 / 2)
    # ignore: the Atelectasis cell of study 2 leaves the counts.
    ign = clinical.clinical_efficacy(ref, gen, "ignore")
    assert ign["precision_micro"] == pytest.approx(1 / 2)
    assert ign["recall_micro"] == pytest.approx(1 / 2)


def test_matches_sklearn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    states = np.array([P, N, U, B])
    ref = rng.choice(states, size=(200, L.NUM_OBSERVATIONS), p=[0.2, 0.3, 0.1, 0.4]).astype(np.int8)
    gen = rng.choice(states, size=(200, L.NUM_OBSERVATIONS), p=[0.25, 0.25, 0.1, 0.4]).astype(np.int8)
    for policy in ("positive", "negative"):
        ours = clinical.clinical_efficacy(ref, gen, policy)
        pos = (P, U) if policy == "positive" else (P,)
        y_true, y_pred = np.isin(ref, pos), np.isin(gen, pos)
        for average in ("micro", "macro"):
            p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
            assert ours[f"precision_{average}"] == pytest.approx(p)
            assert ours[f"recall_{average}"] == pytest.approx(r)
            assert ours[f"f1_{average}"] == pytest.approx(f)
        top = [L.INDEX[n] for n in L.TOP5]
        f = metrics.f1_score(y_true[:, top], y_pred[:, top], average="micro", zero_division=0)
        assert ours["top5/f1_micro"] == pytest.approx(f)
    # ignore: per observation, sklearn on the cells where neither side is uncertain.
    ours = clinical.clinical_efficacy(ref, gen, "ignore")
    for name in ("Cardiomegaly", "Edema"):
        i = L.INDEX[name]
        keep = (ref[:, i] != U) & (gen[:, i] != U)
        f = metrics.f1_score(ref[keep, i] == P, gen[keep, i] == P, zero_division=0)
        assert ours[f"f1/{name}"] == pytest.approx(f)


def test_resampled_counts_equal_direct_computation():
    rng = np.random.default_rng(1)
    ref = rng.choice([P, N, U, B], size=(30, L.NUM_OBSERVATIONS)).astype(np.int8)
    gen = rng.choice([P, N, U, B], size=(30, L.NUM_OBSERVATIONS)).astype(np.int8)
    idx = rng.integers(0, 30, size=30)
    counts = clinical.ce_counts(ref, gen)
    assert clinical.ce_from_counts(counts.take(idx)) == clinical.ce_from_counts(clinical.ce_counts(ref[idx], gen[idx]))


def test_bad_arguments():
    ref = np.zeros((2, L.NUM_OBSERVATIONS), np.int8)
    with pytest.raises(ValueError, match="uncertain"):
        clinical.clinical_efficacy(ref, ref, "maybe")
    with pytest.raises(ValueError, match="label arrays"):
        clinical.clinical_efficacy(ref, ref[:, :5])

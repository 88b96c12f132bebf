"""What the VQ-GAN codes let the LLM see: a linear probe from codes to the 14 observations.

The LLM reads a radiograph only through its VQ-GAN codes, so a finding the codes do not carry
cannot be reported, whatever the LLM learns. The probe measures that ceiling: one L2-regularised
logistic regression per observation (scikit-learn) on the one-hot codes of every position
(``n * K`` binary features; position matters: an effusion is a code at the base, not anywhere),
fitted on training studies and scored by AUROC on held-out studies.

Targets follow conditional correctness (`conditional.conditional_correctness`): positive -> 1,
negative and blank -> 0, uncertain studies left out of that observation. ``No Finding`` is not
probed (it is the absence of the others).

Shape legend: N studies, n codes per image, K codebook size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation.vqa_metrics import auroc


def one_hot_codes(codes: np.ndarray, codebook_size: int):
    """codes int [N, n] -> sparse CSR [N, n * K] with one 1 per (study, position)."""
    from scipy import sparse

    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, n], got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size})")
    N, n = codes.shape
    columns = (np.arange(n)[None, :] * codebook_size + codes).reshape(-1)
    rows = np.repeat(np.arange(N), n)
    return sparse.csr_matrix((np.ones(N * n, np.float32), (rows, columns)), shape=(N, n * codebook_size))


def code_probe(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
               codebook_size: int, *, regularization: float = 0.1,
               observations: Sequence[str] = L.OBSERVATIONS[1:]) -> dict[str, float | int]:
    """Per-observation test AUROC of a logistic regression on one-hot codes.

    Returns ``auroc/<name>`` and ``n/<name>`` for every observation with both classes in the
    training and the test studies, and ``auroc_macro`` (their mean) with ``findings_scored``.
    ``regularization`` is scikit-learn's ``C`` (inverse L2 strength).
    """
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = one_hot_codes(train_codes, codebook_size), one_hot_codes(test_codes, codebook_size)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    out: dict[str, float | int] = {}
    aurocs = []
    for name in observations:
        i = L.INDEX[name]
        tr = train_labels[:, i] != L.UNCERTAIN
        te = test_labels[:, i] != L.UNCERTAIN
        y_train = train_labels[tr, i] == L.POSITIVE
        y_test = test_labels[te, i] == L.POSITIVE
        if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
            continue
        model = LogisticRegression(C=regularization, max_iter=2000)
        model.fit(x_train[tr], y_train)
        value = auroc(model.predict_proba(x_test[te])[:, 1], y_test)
        out[f"auroc/{name}"] = value
        out[f"n/{name}"] = int(te.sum())
        aurocs.append(value)
    out["auroc_macro"] = float(np.mean(aurocs)) if aurocs else float("nan")
    out["findings_scored"] = len(aurocs)
    return out

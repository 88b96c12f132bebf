"""What the VQ-GAN codes let the LLM see: a linear probe from codes to the 14 observations.

The LLM reads a radiograph only through its VQ-GAN codes, so a finding the codes do not carry
cannot be reported, whatever the LLM learns. The probe measures that ceiling: one L2-regularised
logistic regression per observation (scikit-learn) on the one-hot codes of every position
(``n * K`` binary features; position matters: an effusion is a code at the base, not anywhere),
fitted on training studies and scored by AUROC on held-out studies.

Targets follow conditional correctness (`conditional.conditional_correctness`): positive -> 1,
negative and blank -> 0, uncertain studies left out of that observation. ``No Finding`` is not
probed (it is the absence of the others).

The same ceiling in the bars' own figures (`probe_report_labels`, `probe_vqa_answers`): a reader
that writes a report's labels and answers each question from the codes with such regressions,
scored by the evaluation as the model is (CE F1 against the labeler on the reference; VQA
accuracy and yes/no AUROC). It is the best reader of the codes measured here, not a proof that no
reader does better: a 4-layer transformer trained from the codes to the labels read less
(README).

Shape legend: N studies, n codes per image, K codebook size.
"""

from __future__ import annotations

import collections
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


def _logistic(regularization: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=regularization, max_iter=2000)


def _fit_predict(x_fit, fit_rows, y, x_score, score_rows, regularization: float) -> tuple[np.ndarray, np.ndarray]:
    model = _logistic(regularization).fit(x_fit[fit_rows], y)
    return model.classes_, model.predict_proba(x_score[score_rows])


def _fit_predict_all(tasks: Sequence[tuple], regularization: float, n_jobs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent regressions, each ``(x_fit, fit_rows, y, x_score, score_rows)`` -> (classes,
    probabilities of ``x_score[score_rows]``), in ``n_jobs`` processes (joblib; 1: in this one).

    Processes, not threads: a fit holds the GIL most of its time (2 threads: 1.1x, 2 processes:
    2x on 2 cores). The results are the same as one by one (lbfgs is deterministic)."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs)(delayed(_fit_predict)(*task, regularization) for task in tasks)


def code_probe(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
               codebook_size: int, *, regularization: float = 0.1,
               observations: Sequence[str] = L.OBSERVATIONS[1:], n_jobs: int = 1) -> dict[str, float | int]:
    """Per-observation test AUROC of a logistic regression on one-hot codes.

    Returns ``auroc/<name>`` and ``n/<name>`` for every observation with both classes in the
    training and the test studies, and ``auroc_macro`` (their mean) with ``findings_scored``.
    ``regularization`` is scikit-learn's ``C`` (inverse L2 strength); ``n_jobs`` processes fit
    the observations' regressions.
    """
    return linear_probe(one_hot_codes(train_codes, codebook_size), train_labels, one_hot_codes(test_codes, codebook_size),
                        test_labels, regularization=regularization, observations=observations, n_jobs=n_jobs)


def linear_probe(x_train, train_labels: np.ndarray, x_test, test_labels: np.ndarray, *, regularization: float = 0.1,
                 observations: Sequence[str] = L.OBSERVATIONS[1:], n_jobs: int = 1) -> dict[str, float | int]:
    """`code_probe` over any features ``x`` [N, F] (dense or sparse): per-observation test AUROC
    of a logistic regression, uncertain labels left out; the same keys as `code_probe`."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    scored, tasks = [], []
    for name in observations:
        i = L.INDEX[name]
        tr = train_labels[:, i] != L.UNCERTAIN
        te = test_labels[:, i] != L.UNCERTAIN
        y_train = train_labels[tr, i] == L.POSITIVE
        y_test = test_labels[te, i] == L.POSITIVE
        if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
            continue
        scored.append((name, y_test, te))
        tasks.append((x_train, tr, y_train, x_test, te))
    out: dict[str, float | int] = {}
    aurocs = []
    for (name, y_test, te), (_, proba) in zip(scored, _fit_predict_all(tasks, regularization, n_jobs), strict=True):
        value = auroc(proba[:, 1], y_test)
        out[f"auroc/{name}"] = value
        out[f"n/{name}"] = int(te.sum())
        aurocs.append(value)
    out["auroc_macro"] = float(np.mean(aurocs)) if aurocs else float("nan")
    out["findings_scored"] = len(aurocs)
    return out


def micro_f1_thresholds(scores: np.ndarray, positive: np.ndarray, passes: int = 3) -> np.ndarray:
    """Per-observation score thresholds (predict positive when score >= it; +inf: never) that
    maximise the micro-F1 pooled over observations, on these studies: coordinate ascent from
    "never", each observation's best threshold given the others', ``passes`` rounds.

    Micro-F1 = 2 TP / (predicted + actual positives); an observation read poorly lowers it
    unless written rarely, so a threshold is chosen for the pooled figure, not its own F1.
    scores float [N, K], positive bool [N, K] -> float [K].
    """
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n, k = scores.shape
    actual = positive.sum()
    thresholds = np.full(k, np.inf)
    tp_k, pred_k = np.zeros(k), np.zeros(k)
    candidates = []
    for j in range(k):
        order = np.argsort(-scores[:, j], kind="stable")
        s = scores[order, j]
        keep = np.r_[s[1:] != s[:-1], True]  # a threshold takes every tie at or above it
        candidates.append((np.r_[np.inf, s[keep]], np.r_[0, np.cumsum(positive[order, j])[keep]],
                           np.r_[0, np.arange(1, n + 1)[keep]]))
    for _ in range(passes):
        for j, (cut, tp, pred) in enumerate(candidates):
            other_tp, other_pred = tp_k.sum() - tp_k[j], pred_k.sum() - pred_k[j]
            denominator = other_pred + pred + actual
            f1 = np.divide(2 * (other_tp + tp), denominator, out=np.zeros(len(cut)), where=denominator > 0)
            best = int(np.argmax(f1))  # the first maximum: the fewest written positives
            thresholds[j], tp_k[j], pred_k[j] = cut[best], tp[best], pred[best]
    return thresholds


def probe_report_labels(train_codes: np.ndarray, train_positive: np.ndarray, test_codes: np.ndarray,
                        codebook_size: int, *, regularization: float = 0.1, folds: int = 3,
                        seed: int = 0, n_jobs: int = 1) -> np.ndarray:
    """The labels a linear reader of the codes would write in a report: bool [N_test, K].

    ``train_positive`` bool [N, K]: the labeler's findings in the training references (binarised
    as clinical efficacy binarises them). Per observation, a logistic regression on the one-hot
    codes; the thresholds maximise the micro-F1 (the CE figure the labels are scored by) of
    out-of-fold predictions on the training studies (``folds``-fold, stratified;
    `micro_f1_thresholds`). An observation with fewer positive (or negative) training studies
    than ``folds`` is written as its training majority. ``n_jobs`` processes fit the regressions
    (every fold of every observation; the out-of-fold scores are scikit-learn's
    ``cross_val_predict``'s).
    """
    from sklearn.model_selection import StratifiedKFold

    x_train, x_test = one_hot_codes(train_codes, codebook_size), one_hot_codes(test_codes, codebook_size)
    train_positive = np.asarray(train_positive, bool)
    k = train_positive.shape[1]
    oof = np.zeros(train_positive.shape)
    test_scores = np.zeros((x_test.shape[0], k))
    every_test_study = np.arange(x_test.shape[0])
    targets, tasks = [], []  # (scores array, its rows, column) per regression
    for j in range(k):
        y = train_positive[:, j]
        if min(y.sum(), (~y).sum()) < folds:  # too few to fit: the majority, as a constant score
            oof[:, j], test_scores[:, j] = float(y.mean() > 0.5), float(y.mean() > 0.5)
            continue
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for fit_rows, held_out in cv.split(np.zeros(len(y)), y):
            targets.append((oof, held_out, j))
            tasks.append((x_train, fit_rows, y[fit_rows], x_train, held_out))
        targets.append((test_scores, every_test_study, j))
        tasks.append((x_train, np.arange(len(y)), y, x_test, every_test_study))
    for (scores, rows, j), (_, proba) in zip(targets, _fit_predict_all(tasks, regularization, n_jobs), strict=True):
        scores[rows, j] = proba[:, 1]
    return test_scores >= micro_f1_thresholds(oof, train_positive)[None, :]


def probe_vqa_answers(train_codes: np.ndarray, train_pairs: Sequence[tuple[int, str, str]], test_codes: np.ndarray,
                      test_questions: Sequence[tuple[int, str]], codebook_size: int, *,
                      regularization: float = 0.1, n_jobs: int = 1) -> list[tuple[str, float | None]]:
    """The answers a linear reader of the codes would give: one (answer, P(yes) or None) per
    ``(test study index, question)``.

    ``train_pairs``: (training study index, question, normalised answer). Per question wording,
    a multinomial logistic regression on the one-hot codes of the studies it was asked about,
    over the answers seen for it; a wording with one answer in training gives that answer, an
    unseen wording the most common answer overall. P(yes) is the regression's probability of
    "yes" (for a wording answered only "yes" or only "no": 1 or 0; unseen: 0.5).
    """
    x_train, x_test = one_hot_codes(train_codes, codebook_size), one_hot_codes(test_codes, codebook_size)
    by_question: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for i, question, answer in train_pairs:
        by_question[question].append((i, answer))
    overall = collections.Counter(a for _, _, a in train_pairs).most_common(1)[0][0]
    wanted: dict[str, list[int]] = collections.defaultdict(list)
    for j, (_, question) in enumerate(test_questions):
        wanted[question].append(j)
    out: list[tuple[str, float | None]] = [(overall, 0.5)] * len(test_questions)
    fitted, tasks = [], []
    for question, rows in wanted.items():
        seen = by_question.get(question)
        if not seen:
            continue
        studies = np.array([i for i, _ in seen])
        answers = np.array([a for _, a in seen])
        test_studies = np.array([test_questions[j][0] for j in rows])
        classes = sorted(set(answers.tolist()))
        if len(classes) == 1:
            p_yes = {"yes": 1.0, "no": 0.0}.get(classes[0])
            for j in rows:
                out[j] = (classes[0], p_yes)
            continue
        fitted.append(rows)
        tasks.append((x_train, studies, answers, x_test, test_studies))
    for rows, (classes_, proba) in zip(fitted, _fit_predict_all(tasks, regularization, n_jobs), strict=True):
        names = list(classes_)
        for j, p in zip(rows, proba, strict=True):
            out[j] = (names[int(np.argmax(p))], float(p[names.index("yes")]) if "yes" in names else None)
    return out

"""NLG metrics equal pycocoevalcap's own scorers run directly on the PTB-tokenised corpus."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from mavilt_jax.evaluation import nlg

REFERENCES = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. Calcified granuloma in the right upper lobe.",
    "Right lower lobe consolidation, concerning for pneumonia. No pneumothorax.",
    "Stable cardiomediastinal silhouette. Degenerative changes of the thoracic spine.",
]
CANDIDATES = [
    "Heart size is normal. Lungs are clear. No effusion or pneumothorax.",
    "Cardiomegaly. Left pleural effusion and atelectasis.",
    "No acute cardiopulmonary process.",
    "Consolidation in the right lower lobe may represent pneumonia.",
    "The cardiomediastinal silhouette is stable. No acute disease.",
]


@pytest.fixture(scope="module")
def scorer():
    with nlg.NLGScorer(REFERENCES, CANDIDATES) as s:
        yield s


def _reference_scores() -> dict[str, float]:
    gts = {i: [{"caption": r}] for i, r in enumerate(REFERENCES)}
    res = {i: [{"caption": c}] for i, c in enumerate(CANDIDATES)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{k + 1}": b for k, b in enumerate(bleu)})
    meteor = Meteor()
    out["METEOR"], _ = meteor.compute_score(gts, res)
    out["ROUGE-L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


def test_scores_equal_pycocoevalcap_scorers(scorer):
    ours = scorer.score()
    ref = _reference_scores()
    assert set(ours) == set(nlg.NLG_METRICS)
    for name in nlg.NLG_METRICS:
        assert ours[name] == pytest.approx(float(ref[name]), abs=1e-9), name
    # Sanity: non-trivial values (a bug returning 0 or 1 everywhere would not pass above either).
    assert 0.1 < ours["BLEU-1"] < 0.9


def test_resample_scores_the_multiset(scorer):
    """Scoring indices [0, 0, 2] equals scoring that corpus (duplicates included) directly."""
    idx = np.array([0, 0, 2])
    ours = scorer.score(idx)
    refs = [REFERENCES[i] for i in idx]
    cands = [CANDIDATES[i] for i in idx]
    gts = {i: [{"caption": r}] for i, r in enumerate(refs)}
    res = {i: [{"caption": c}] for i, c in enumerate(cands)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    assert ours["BLEU-4"] == pytest.approx(bleu[3], abs=1e-12)
    assert ours["CIDEr"] == pytest.approx(cider, abs=1e-12)
    assert ours["ROUGE-L"] == pytest.approx(rouge, abs=1e-12)
    # METEOR's corpus score over repeated segments is the jar's EVAL over repeated statistics.
    assert 0.0 < ours["METEOR"] < 1.0


def test_identical_corpus_scores_high():
    scores = nlg.nlg_metrics(REFERENCES[:2], REFERENCES[:2], meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    with pytest.raises(nlg.JavaNotFoundError, match="needs Java"):
        nlg.ptb_tokenize(["No effusion."])


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="candidates"):
        nlg.NLGScorer(["a"], ["a", "b"], meteor=False)

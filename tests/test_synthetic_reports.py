"""Synthetic reports state exactly their labels: checked with an independent keyword labeler."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.data import phantoms, synthetic_reports

# A deliberately simple reference labeler: per sentence, observation keywords and one state cue.
KEYWORDS = {
    "Enlarged Cardiomediastinum": r"mediastinal contours|cardiomediastinal silhouette|mediastin\w* (is |may be )?widen|widened mediastinum",
    "Cardiomegaly": r"cardiomegaly|heart size|heart is|heart may be|enlarged heart|cardiac silhouette",
    "Lung Opacity": r"opacit",
    "Lung Lesion": r"nodule|mass\b|masses",
    "Edema": r"edema",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelectasis",
    "Pneumothorax": r"pneumothorax",
    "Pleural Effusion": r"pleural effusion",
    "Fracture": r"fracture",
    "Support Devices": r"\btube\b|catheter|pacemaker",
}
UNCERTAIN_CUES = r"possible|may represent|may be|cannot be excluded|questionable|borderline"
NEGATIVE_CUES = r"\bno\b|without|negative for|not enlarged|normal"


def reference_labels(text: str) -> np.ndarray:
    out = np.full((L.NUM_OBSERVATIONS,), L.ABSENT, np.int8)
    for sentence in re.split(r"(?<=\.)\s+", text.lower()):
        if re.search(UNCERTAIN_CUES, sentence):
            state = L.UNCERTAIN
        elif re.search(NEGATIVE_CUES, sentence):
            state = L.NEGATIVE
        else:
            state = L.POSITIVE
        for name, pattern in KEYWORDS.items():
            if re.search(pattern, sentence):
                i = L.INDEX[name]
                assert out[i] in (L.ABSENT, state), f"{name} stated two ways in: {text}"
                out[i] = state
    pathology = [L.INDEX[n] for n in L.OBSERVATIONS if n not in ("No Finding", "Support Devices")]
    if not np.isin(out[pathology], (L.POSITIVE, L.UNCERTAIN)).any():
        out[L.INDEX["No Finding"]] = L.POSITIVE
    return out


def _studies(n: int, seed: int = 0):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        f = phantoms.sample_findings(rng)
        yield f, synthetic_reports.compose_report(f, rng)


def test_reports_state_exactly_their_labels():
    seen = np.zeros((L.NUM_OBSERVATIONS, 4), int)
    for f, report in _studies(400):
        expected = phantoms.findings_to_labels(f)
        got = reference_labels(report.findings + " " + report.impression)
        assert np.array_equal(got, expected), f"{report.text}\n{got}\n{expected}"
        # Each positive or uncertain finding is also in the impression, the section labelers read.
        imp = reference_labels(report.impression)
        for i, v in enumerate(expected):
            if v in (L.POSITIVE, L.UNCERTAIN) and L.OBSERVATIONS[i] != "No Finding":
                assert imp[i] == v, report.text
        for i, v in enumerate(expected):
            seen[i, [L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT].index(v)] += 1
    # Every pathology the generator knows appears positive somewhere, most also uncertain.
    for name in ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
                 "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture", "Support Devices", "No Finding"):
        assert seen[L.INDEX[name], 0] > 0, name
    assert seen[:, 2].sum() > 10  # uncertain labels exist


def test_hand_written_case():
    f = phantoms.Findings(
        ctr=0.6, cardiomegaly=phantoms.Cardiomegaly("moderate"),
        effusion=phantoms.Effusion("bilateral", "small", hedged=True),
        devices=("endotracheal tube",), negated=("Pneumothorax", "Fracture"))
    labels = phantoms.findings_to_labels(f)
    expected = np.full((14,), L.ABSENT, np.int8)
    expected[[L.INDEX["Cardiomegaly"], L.INDEX["Support Devices"]]] = L.POSITIVE
    expected[L.INDEX["Pleural Effusion"]] = L.UNCERTAIN
    expected[[L.INDEX["Pneumothorax"], L.INDEX["Fracture"]]] = L.NEGATIVE
    assert np.array_equal(labels, expected)
    report = synthetic_reports.compose_report(f, np.random.default_rng(3))
    assert "cardiomegaly" in report.text.lower() or "enlarged" in report.text.lower()
    assert "pneumothorax" in report.findings.lower()
    assert "No acute" not in report.impression


def test_text_is_not_a_function_of_labels():
    f = phantoms.Findings(effusion=phantoms.Effusion("right", "moderate"), opacity=phantoms.Opacity("consolidation", "right", "lower"),
                          negated=("Pneumothorax", "Cardiomegaly", "Enlarged Cardiomediastinum"))
    texts = {synthetic_reports.compose_report(f, np.random.default_rng(s)).text for s in range(30)}
    assert len(texts) >= 10
    firsts = {t.split(". ")[0] for t in texts}
    assert len(firsts) >= 3  # ordering and phrasing vary


def test_normal_studies_and_devices_only():
    normal = phantoms.Findings(negated=("Pleural Effusion", "Pneumothorax"))
    r = synthetic_reports.compose_report(normal, np.random.default_rng(0))
    assert r.impression in synthetic_reports.NORMAL_IMPRESSIONS
    devices = phantoms.Findings(devices=("central venous catheter",))
    assert phantoms.findings_to_labels(devices)[L.INDEX["No Finding"]] == L.POSITIVE
    r = synthetic_reports.compose_report(devices, np.random.default_rng(0))
    assert "catheter" in r.impression and r.impression.split(". ")[-1].rstrip(".") + "." in synthetic_reports.NORMAL_IMPRESSIONS


@pytest.mark.parametrize("name", ["Pleural Effusion", "Pneumothorax", "Edema", "Fracture"])
def test_negated_observation_is_stated_negatively(name):
    f = phantoms.Findings(negated=(name,))
    got = reference_labels(synthetic_reports.compose_report(f, np.random.default_rng(1)).findings)
    assert got[L.INDEX[name]] == L.NEGATIVE

"""VQA pairs agree with the labels and the structured findings, and yes/no is balanced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.data import phantoms, vqa

NAME_OF_QUESTION = {q: name for name, qs in vqa.PRESENCE_QUESTIONS.items() for q in qs}


def _check_against_labels(pairs, labels):
    yes = no = 0
    for p in pairs:
        assert p["question_type"] in vqa.QUESTION_TYPES
        assert p["answer_type"] == ("closed" if p["answer"] in ("yes", "no") else "open")
        if p["question_type"] == "presence":
            state = labels[L.INDEX[NAME_OF_QUESTION[p["question"]]]]
            assert state == (L.POSITIVE if p["answer"] == "yes" else state) and state != L.UNCERTAIN
            if p["answer"] == "no":
                assert state in (L.NEGATIVE, L.ABSENT)
        elif p["question_type"] == "normality":
            assert (p["answer"] == "yes") == (labels[L.INDEX["No Finding"]] == L.POSITIVE)
        elif p["question_type"] == "abnormality":
            names = [n.lower() for n, v in zip(L.OBSERVATIONS, labels)
                     if v == L.POSITIVE and n not in ("No Finding", "Support Devices")]
            assert p["answer"] == (", ".join(names) or "none")
        if p["answer_type"] == "closed":
            yes += p["answer"] == "yes"
            no += p["answer"] == "no"
    return yes, no


def test_vqa_from_findings_agrees_with_labels_and_attributes():
    total_yes = total_no = without_closed = 0
    kinds = set()
    for i in range(300):
        rng = np.random.default_rng([7, i])
        f = phantoms.sample_findings(rng)
        pairs = vqa.vqa_from_findings(f, rng)
        yes, no = _check_against_labels(pairs, phantoms.findings_to_labels(f))
        assert yes == no  # balanced within every study
        without_closed += yes == 0  # only when every finding is hedged
        total_yes += yes
        total_no += no
        attrs = json.loads(f.to_json())
        for p in pairs:
            kinds.add(p["question_type"])
            if p["question_type"] == "laterality":
                key = {"pleural effusion": "effusion", "pneumothorax": "pneumothorax", "atelectasis": "atelectasis",
                       "opacity": "opacity", "consolidation": "opacity", "nodule": "nodule", "mass": "nodule",
                       "rib fracture": "fracture"}
                item = next(attrs[v] for k, v in key.items() if k in p["question"].lower())
                assert p["answer"] == item["side"]
            if p["question"] == "How large is the pleural effusion?":
                assert p["answer"] == attrs["effusion"]["size"]
            if p["question"].startswith("Where is the"):
                assert p["answer"] == f"{attrs['nodule']['side']} {attrs['nodule']['zone']} zone"
    assert total_yes == total_no
    assert without_closed < 15
    assert kinds == set(vqa.QUESTION_TYPES)


def test_vqa_from_labels_hand_example():
    labels = np.full((14,), L.ABSENT, np.int8)
    labels[L.INDEX["Cardiomegaly"]] = L.POSITIVE
    labels[L.INDEX["Pleural Effusion"]] = L.POSITIVE
    labels[L.INDEX["Pneumothorax"]] = L.NEGATIVE
    labels[L.INDEX["Edema"]] = L.NEGATIVE
    pairs = vqa.vqa_from_labels(labels, np.random.default_rng(0))
    closed = [p for p in pairs if p["answer_type"] == "closed"]
    assert sorted(p["answer"] for p in closed) == ["no", "no", "yes", "yes"]
    abnormal = [p for p in pairs if p["question_type"] == "abnormality"]
    assert [p["answer"] for p in abnormal] == ["cardiomegaly, pleural effusion"]
    _check_against_labels(pairs, labels)


def test_vqa_from_labels_random_vectors():
    rng = np.random.default_rng(1)
    for _ in range(200):
        labels = rng.choice([L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT], size=14, p=[0.15, 0.25, 0.05, 0.55]).astype(np.int8)
        pairs = vqa.vqa_from_labels(labels, rng)
        yes, no = _check_against_labels(pairs, labels)
        assert yes == no


def test_vqa_from_labels_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        vqa.vqa_from_labels(np.zeros((13,), np.int8), np.random.default_rng(0))

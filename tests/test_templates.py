"""Instruction templates of Eq. 8-10: held-out split, placeholders, sampling frequencies."""

from __future__ import annotations

import collections
import string

import numpy as np
import pytest
import scipy.stats

from mavilt_jax.data import templates as T


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _all_keys():
    for task in T.TASKS:
        for qtype in (T.VQA_TYPES + (None,) if task == "vqa" else (None,)):
            yield task, qtype


@pytest.mark.parametrize("task,qtype", list(_all_keys()))
def test_train_and_eval_wordings_are_disjoint_with_the_right_placeholders(task, qtype):
    train, held_out = T.templates(task, "train", qtype), T.templates(task, "eval", qtype)
    assert len(train) >= 3 and len(held_out) >= 1
    assert not {t.text for t in train} & {t.text for t in held_out}
    expected = {"report"} if task == "report_to_image" else {"question"} if task == "vqa" else set()
    for template in train + held_out:
        assert template.task == task
        assert _fields(template.text) == expected
    assert T.default_template(task, qtype) == held_out[0]


@pytest.mark.parametrize("task,qtype", list(_all_keys()))
def test_train_wordings_are_many_and_distinct(task, qtype):
    train = [t.text for t in T.templates(task, "train", qtype)]
    assert len(train) == len(set(train)) >= 25


def test_vqa_question_types_share_their_wording_around_the_question():
    """The answer's form must come from the question: apart from a few hand-written wordings per
    type, every question type is asked with the same prefixes and suffixes."""
    train = {q: {t.text for t in T.templates("vqa", "train", q)} for q in T.VQA_TYPES}
    shared = set.intersection(*train.values())
    assert len(shared) >= 25
    for q in T.VQA_TYPES:
        assert len(train[q] - shared) <= 4, q


def test_render():
    template = T.Template("report_to_image", "Report: {report} Produce the X-ray.")
    assert template.render(report="Mild cardiomegaly.") == "Report: Mild cardiomegaly. Produce the X-ray."
    vqa = T.templates("vqa", "train", "presence")[0]
    assert vqa.render(question="Is there a pneumothorax?") == "Is there a pneumothorax? Answer yes or no."


def test_question_types_are_those_of_the_vqa_generator():
    from mavilt_jax.data import vqa

    assert set(vqa.QUESTION_TYPES) == set(T.VQA_TYPES)


def test_unknown_question_type_uses_generic_wording_and_bad_names_fail():
    assert T.templates("vqa", "train", "comparison") == T.templates("vqa", "train", None)
    with pytest.raises(ValueError, match="unknown task"):
        T.templates("caption")
    with pytest.raises(ValueError, match="split"):
        T.templates("report", "test")


def test_sampling_is_uniform_over_train_wordings_and_reproducible():
    rng = np.random.default_rng(0)
    n = 6000
    counts = collections.Counter(T.sample_template("report", rng).text for _ in range(n))
    train = [t.text for t in T.templates("report")]
    assert set(counts) == set(train)  # held-out wordings are never drawn
    expected = n / len(train)
    chi2 = sum((counts[t] - expected) ** 2 / expected for t in train)
    assert chi2 < scipy.stats.chi2.ppf(0.999, len(train) - 1)
    a = [T.sample_template("vqa", np.random.default_rng(3), question_type="location").text for _ in range(3)]
    assert len(set(a)) == 1
    assert T.sample_template("findings", np.random.default_rng(1), split="eval").text in {
        t.text for t in T.templates("findings", "eval")}

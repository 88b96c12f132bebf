"""The main job's evaluation pieces: controls, the code probe, bars (values checked by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import pipeline_eval, probe


@pytest.mark.parametrize("n", [2, 3, 7, 200])
def test_derangement_moves_every_study(n):
    perm = pipeline_eval.derangement(n, seed=0)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(perm, pipeline_eval.derangement(n, seed=0))


def test_derangement_needs_two_studies():
    with pytest.raises(ValueError):
        pipeline_eval.derangement(1, seed=0)


def test_constant_report_is_the_most_common():
    reports = ["b", "a", "c", "a", "b", "a"]
    assert pipeline_eval.constant_report(reports) == "a"
    assert pipeline_eval.constant_report(["x", "y"]) == "x"  # ties: the first seen


def test_majority_answers_by_question():
    pairs = [{"question": "Is there an effusion?", "answer": "No"},
             {"question": "Is there an effusion?", "answer": "yes"},
             {"question": "Is there an effusion?", "answer": "no"},
             {"question": "Which side?", "answer": "left"}]
    answers, p_yes, overall = pipeline_eval.majority_answers(pairs)
    assert answers == {"Is there an effusion?": "no", "Which side?": "left"}
    assert p_yes["Is there an effusion?"] == pytest.approx(1 / 3)
    assert p_yes["Which side?"] == 0.0
    assert overall == "no"


def test_one_hot_codes_matches_a_dense_construction():
    codes = np.array([[0, 2], [1, 1], [2, 0]])
    dense = np.zeros((3, 2 * 3))
    for i, row in enumerate(codes):
        for pos, c in enumerate(row):
            dense[i, pos * 3 + c] = 1
    np.testing.assert_array_equal(probe.one_hot_codes(codes, 3).toarray(), dense)
    with pytest.raises(ValueError):
        probe.one_hot_codes(np.array([[3]]), 3)


def test_code_probe_reads_a_finding_the_codes_carry_and_not_noise():
    rng = np.random.default_rng(0)
    n, K = 400, 8
    codes = rng.integers(0, K, size=(n, 6))
    labels = np.full((n, L.NUM_OBSERVATIONS), L.ABSENT, np.int8)
    effusion = L.INDEX["Pleural Effusion"]
    edema = L.INDEX["Edema"]
    labels[:, effusion] = np.where(codes[:, 2] == 5, L.POSITIVE, L.NEGATIVE)  # carried by position 2
    labels[:, edema] = np.where(rng.random(n) < 0.3, L.POSITIVE, L.NEGATIVE)  # carried by nothing
    labels[0, effusion] = L.UNCERTAIN  # left out, as in conditional correctness
    out = probe.code_probe(codes[:300], labels[:300], codes[300:], labels[300:], K, regularization=10.0)
    assert out["auroc/Pleural Effusion"] == pytest.approx(1.0)
    assert 0.3 < out["auroc/Edema"] < 0.7
    assert out["findings_scored"] == 2
    assert out["auroc_macro"] == pytest.approx((out["auroc/Pleural Effusion"] + out["auroc/Edema"]) / 2)


def test_check_bars_reads_the_model_row():
    results = {"model": {"report_generation": {"clinical_efficacy": {"f1_micro": {"value": 0.82, "ci_low": 0.8,
                                                                                   "ci_high": 0.84}}},
                         "vqa": {"metrics": {"accuracy": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}}}
    bars = pipeline_eval.check_bars(results, {"ce_f1_micro": 0.8, "vqa_accuracy": 0.9, "vqa_auroc": 0.95})
    assert bars["ce_f1_micro"]["met"] and not bars["vqa_accuracy"]["met"]
    assert bars["vqa_auroc"] == {"bar": 0.95, "value": None, "ci_low": None, "ci_high": None, "met": False}
    with pytest.raises(ValueError, match="unknown bar"):
        pipeline_eval.check_bars(results, {"bleu": 0.1})


def test_render_card_names_controls_and_ceilings():
    est = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    row = {"vqa": {"metrics": {"accuracy": est}}}
    card = pipeline_eval.render_card({"split": "test", "n_studies": 3, "model": row, "control_constant_report": row,
                                      "control_shuffled_image": row, "bars": {}, "guidance_sweep": {}})
    assert "control: constant report" in card and "control: shuffled image" in card
    assert "0.500 [0.400, 0.600]" in card


def test_card_puts_vqa_per_question_type_of_model_and_controls_side_by_side():
    def row(severity):
        return {"vqa": {"metrics": {"accuracy": {"value": 0.5}, "accuracy/question_type/severity": {"value": severity},
                                    "accuracy/question_type/presence": {"value": 0.75}}}}

    card = pipeline_eval.render_card({"split": "test", "n_studies": 3, "model": row(0.0),
                                      "control_constant_report": row(0.5), "control_shuffled_image": None})
    lines = card.splitlines()
    header = next(line for line in lines if line.startswith("| Questions |"))
    assert header == "| Questions | Model | control: constant report / majority answer |"
    assert "| severity | 0.000 | 0.500 |" in lines and "| presence | 0.750 | 0.750 |" in lines
    assert "| closed | – | – |" in lines  # a figure a row lacks is a dash, not a zero


def test_best_scale_takes_the_highest_auroc_ties_to_the_smaller_scale_and_skips_nan():
    assert pipeline_eval.best_scale({"1.0": 0.6, "2.0": 0.72, "3.0": 0.70, "5.0": 0.65}) == 2.0
    assert pipeline_eval.best_scale({"5.0": 0.7, "3.0": 0.7, "1.0": 0.5}) == 3.0
    assert pipeline_eval.best_scale({"1.0": float("nan"), "2.0": 0.4}) == 2.0
    with pytest.raises(ValueError, match="no guidance scale"):
        pipeline_eval.best_scale({"1.0": float("nan")})


def test_draws_set_aside_leave_the_later_draws_and_config_as_if_nothing_ran():
    import dataclasses

    import jax

    from mavilt_jax.evaluation import generate

    g = object.__new__(generate.Generator)  # only the random stream and the config are involved
    g._rng, g.cfg = jax.random.key(7), generate.GenerationConfig(guidance_scale=3.0)
    expected = jax.random.key_data(jax.random.split(jax.random.key(7))[0])
    with g.draws_set_aside():
        for _ in range(3):  # what _run does per call
            g._rng, _ = jax.random.split(g._rng)
        g.cfg = dataclasses.replace(g.cfg, guidance_scale=5.0)
    assert g.cfg.guidance_scale == 3.0
    g._rng, _ = jax.random.split(g._rng)
    np.testing.assert_array_equal(jax.random.key_data(g._rng), expected)


def test_card_names_the_validation_chosen_guidance_scale_beside_the_test_sweep():
    sweep = {"2.0": {"conditional": {"metrics": {"auroc_macro": {"value": 0.7}}}}}  # a report_to_image result
    card = pipeline_eval.render_card({
        "split": "test", "n_studies": 3, "model": None, "guidance_sweep": sweep,
        "guidance_selection": {"split": "validation", "n_studies": 5, "chosen": 2.0,
                               "judge_auroc_macro": {"2.0": 0.75}}})
    assert "The Model row's scale, 2.0, was chosen on 5 validation studies" in card
    assert "| 2.0 | 0.700 | – | – | 0.750 |" in card


def test_memoized_features_compute_each_batch_once():
    calls = []

    def features(images):
        calls.append(images.shape)
        return images.reshape(len(images), -1).mean(axis=1, keepdims=True)

    fn = pipeline_eval.memoized(features)
    a, b = np.zeros((2, 4, 4), np.uint8), np.ones((2, 4, 4), np.uint8)
    np.testing.assert_array_equal(fn(a), features(a))
    fn(a)
    np.testing.assert_array_equal(fn(b), [[1.0], [1.0]])
    assert len(calls) == 3  # a (wrapped), a (direct reference above), b; the second fn(a) was remembered


def test_training_wording_diagnostic_picks_the_first_training_instruction():
    from types import SimpleNamespace

    from mavilt_jax.evaluation import generate

    def template(wording, fixed=False, *args):
        ns = SimpleNamespace(cfg=generate.GenerationConfig(wording=wording),
                             builder=SimpleNamespace(config=SimpleNamespace(fixed_instructions=fixed)))
        return generate.Generator._template(ns, *args)

    assert template("train", False, "vqa", "laterality").text == "{question} Answer left, right or bilateral."
    assert template("train", False, "report").text == "Write the radiology report for this chest X-ray."
    assert template("eval", False, "report") is None  # the builder's held-out default
    assert template("train", True, "report") is None  # the fixed-instruction ablation keeps its one wording
    with pytest.raises(ValueError, match="wording"):
        generate.GenerationConfig(wording="heldout")


def test_learning_curves_read_thin_and_render(tmp_path):
    from mavilt_jax.evaluation import curves

    lines = [{"step": 100, "text_ce": 1.0, "text_ce_other_image": 1.5, "image_gain": 0.5},
             {"step": 300, "text_ce": 0.5, "text_ce_other_image": 0.75, "image_gain": 0.25},
             {"step": 200, "text_ce": 0.9, "text_ce_other_image": 1.0, "image_gain": 0.1},
             {"step": 300, "text_ce": 0.4, "text_ce_other_image": 0.7, "image_gain": 0.3}]  # a resumed rerun of 300
    (tmp_path / "eval_history.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    history = curves.read_history(tmp_path)
    assert [h["step"] for h in history] == [100, 200, 300] and history[-1]["text_ce"] == 0.4
    assert curves.read_history(tmp_path / "missing") == []
    assert [r["step"] for r in curves.thin([{"step": i} for i in range(11)], 3)] == [0, 5, 10]
    text = curves.render({"stage 1": history, "stage 2": []})
    assert "| 300 | 0.4000 | 0.7000 | 0.3000 |" in text and "### stage 2" not in text


@pytest.mark.parametrize("seed", range(20))
def test_micro_f1_thresholds_reach_the_best_micro_f1_of_any_thresholds(seed):
    """Against every combination of thresholds, scored by scikit-learn (ties in the scores)."""
    import itertools

    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    n, k = 12, 3
    positive = rng.random((n, k)) < rng.uniform(0.1, 0.6, k)
    scores = np.round(positive * rng.uniform(0.0, 1.0, k) + rng.random((n, k)), 1)
    thresholds = probe.micro_f1_thresholds(scores, positive)
    got = f1_score(positive.ravel(), (scores >= thresholds).ravel(), zero_division=0)
    candidates = [np.r_[np.inf, np.unique(scores[:, j])] for j in range(k)]
    best = max(f1_score(positive.ravel(), (scores >= np.array(t)).ravel(), zero_division=0)
               for t in itertools.product(*candidates))
    assert got == pytest.approx(best, abs=1e-12)


def test_micro_f1_thresholds_leave_out_an_observation_that_would_lower_the_pooled_f1():
    # Observation 0 read perfectly (F1 1); observation 1 at chance: writing it at any threshold
    # adds more false positives than true ones, so it is never written (threshold inf).
    positive = np.array([[1, 1], [1, 0], [0, 1], [0, 0], [1, 0], [0, 0]], bool)
    scores = np.array([[0.9, 0.2], [0.8, 0.9], [0.1, 0.1], [0.2, 0.8], [0.7, 0.7], [0.3, 0.6]])
    thresholds = probe.micro_f1_thresholds(scores, positive)
    assert thresholds[0] == pytest.approx(0.7) and thresholds[1] == np.inf


def test_probe_report_labels_write_what_the_codes_carry_and_not_noise():
    rng = np.random.default_rng(1)
    n, K = 500, 8
    codes = rng.integers(0, K, size=(n, 6))
    positive = np.stack([codes[:, 2] == 5,                 # carried by position 2
                         rng.random(n) < 0.1,              # carried by nothing (rare: writing it lowers micro-F1)
                         np.zeros(n, bool)], axis=1)       # never positive
    written = probe.probe_report_labels(codes[:400], positive[:400], codes[400:], K, regularization=10.0)
    np.testing.assert_array_equal(written[:, 0], positive[400:, 0])
    assert not written[:, 1].any() and not written[:, 2].any()


def test_probe_vqa_answers_read_the_codes_per_question():
    rng = np.random.default_rng(2)
    n, K = 400, 6
    codes = rng.integers(0, K, size=(n, 4))
    side = np.where(codes[:, 1] < 3, "left", "right")
    present = np.where(codes[:, 0] == 2, "yes", "no")
    pairs = [(i, "Is there X?", present[i]) for i in range(300)]
    pairs += [(i, "Which side?", side[i]) for i in range(300) if i % 2]
    pairs += [(i, "Always?", "yes") for i in range(0, 300, 3)]
    test = [(j, "Is there X?") for j in range(100)] + [(j, "Which side?") for j in range(100)]
    test += [(0, "Always?"), (1, "Never asked?")]
    answers = probe.probe_vqa_answers(codes[:300], pairs, codes[300:], test, K, regularization=10.0)
    assert [a for a, _ in answers[:100]] == present[300:].tolist()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(present[300:] == "yes", [p for _, p in answers[:100]]) == 1.0
    assert [a for a, _ in answers[100:200]] == side[300:].tolist()
    assert all(p is None for _, p in answers[100:200])  # not a yes/no question
    assert answers[200] == ("yes", 1.0)  # one answer in training
    assert answers[201] == ("no", 0.5)  # unseen: the most common answer overall, P(yes) 0.5


def test_card_shows_each_bar_beside_the_ceiling_of_the_codes():
    def est(v):
        return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05}

    model = {"report_generation": {"clinical_efficacy": {"f1_micro": est(0.4)}},
             "report_to_image": {"conditional": {"metrics": {"auroc_macro": est(0.65)}}}}
    reader = {"report_generation": {"clinical_efficacy": {"f1_micro": est(0.6)}}}
    recon = {"report_to_image": {"conditional": {"metrics": {"auroc_macro": est(0.8)}}}}
    results = {"split": "test", "n_studies": 3, "model": model, "ceiling_code_reader": reader,
               "ceiling_reconstruction": recon}
    results["bars"] = pipeline_eval.check_bars(results, {"ce_f1_micro": 0.8, "judge_auroc": 0.9, "vqa_auroc": 0.95})
    lines = pipeline_eval.render_card(results).splitlines()
    assert "| CE micro-F1 (14) | >= 0.8 | 0.400 [0.350, 0.450] | NO | 0.600 [0.550, 0.650] |" in lines
    assert "| Judge AUROC (macro) | >= 0.9 | 0.650 [0.600, 0.700] | NO | 0.800 [0.750, 0.850] |" in lines
    assert "| VQA yes/no AUROC | >= 0.95 | – | NO | – |" in lines
    assert any(line.startswith("| ceiling: a linear reader of the VQ-GAN codes") and "0.600" in line for line in lines)

"""The evaluation entry point: scoring a predictions JSONL end to end, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mavilt_jax import evaluate
from mavilt_jax.evaluation import clinical, frechet, labeler, nlg, records, suite, vqa_metrics

REFERENCES = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "Right lower lobe consolidation. No pneumothorax.",
    "No acute disease. The lungs are clear.",
    "Left basilar atelectasis. Pacemaker in place.",
]
GENERATIONS = [
    "Heart size is normal. No effusion.",
    "Cardiomegaly with a left pleural effusion.",
    "Possible right lower lobe pneumonia.",
    "The lungs are clear.",
    "Left basilar atelectasis.",
]


def _vqa(i: int) -> dict:
    return {"task": "vqa", "study_id": f"s{i}", "question": "Is there cardiomegaly?",
            "answer": "yes" if i % 2 else "no", "prediction": "yes" if i < 3 else "no",
            "p_yes": 0.2 + 0.15 * i, "question_type": "presence", "answer_type": "closed"}


def _write(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


def test_cli_scores_predictions(tmp_path):
    rows = [{"task": "report_generation", "study_id": f"s{i}", "reference": r, "generation": g}
            for i, (r, g) in enumerate(zip(REFERENCES, GENERATIONS))]
    rows += [_vqa(i) for i in range(5)]
    pred = tmp_path / "pred.jsonl"
    _write(pred, rows, extra_lines=["{broken", json.dumps({"task": "vqa", "study_id": "x"})])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.evaluate", f"--workdir={out}", f"--predictions={pred}",
                           "--nometeor", "--nlg_resamples=3", "--resamples=40", "--uncertain=negative",
                           "--method=Test model"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    # Point estimates equal the metric functions applied directly.
    direct_nlg = nlg.nlg_metrics(REFERENCES, GENERATIONS, meteor=False)
    for name, value in direct_nlg.items():
        assert results["report_generation"]["nlg"][name]["value"] == pytest.approx(value, abs=1e-12)
    ce = clinical.clinical_efficacy(labeler.label_reports(REFERENCES), labeler.label_reports(GENERATIONS), "negative")
    got = results["report_generation"]["clinical_efficacy"]
    assert got["f1_micro"]["value"] == pytest.approx(ce["f1_micro"])
    assert got["top5/f1_macro"]["value"] == pytest.approx(ce["top5/f1_macro"])
    assert got["f1_micro"]["n"] == 5 and got["f1_micro"]["resamples"] == 40
    assert got["f1_micro"]["ci_low"] <= got["f1_micro"]["ci_high"]
    vqa = vqa_metrics.vqa_metrics(rows[5:])
    assert results["vqa"]["metrics"]["accuracy"]["value"] == pytest.approx(vqa["accuracy"])
    assert results["vqa"]["metrics"]["auroc_yes_no"]["value"] == pytest.approx(vqa["auroc_yes_no"])
    # Bad lines are reported with their line numbers.
    assert [s["line"] for s in results["skipped_records"]] == [11, 12]
    card = (out / "report_card.md").read_text()
    assert "Table I:" in card and "Table III:" in card and "Table II:" not in card
    assert "uncertain -> negative" in card and "| Test model |" in card
    # Per-sample outputs carry the labels, and re-scoring them gives the same figures.
    per_sample = records.read_records(out / "per_sample.jsonl")
    gen = per_sample.by_task["report_generation"]
    np.testing.assert_array_equal(np.array([r["reference_labels"] for r in gen]), labeler.label_reports(REFERENCES))
    again = suite.score_report_generation(gen, suite.EvalConfig(meteor=False, nlg_resamples=3, resamples=40,
                                                                uncertain="negative"))
    assert again["clinical_efficacy"]["f1_micro"] == got["f1_micro"]


@pytest.mark.parametrize("args,message", [
    ([], "--predictions"),
    (["--predictions=/nonexistent/p.jsonl"], "predictions file not found"),
    (["--predictions=/dev/null", "--uncertain=maybe"], "uncertain"),
    (["--predictions=/dev/null", "--resamples=0"], "resample"),
])
def test_cli_bad_arguments_exit_with_a_message(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.evaluate", f"--workdir={tmp_path}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _pixels(images: np.ndarray) -> np.ndarray:
    """A cheap stand-in feature extractor: 4x4 block means."""
    x = images.astype(np.float64)
    n, h, w = x.shape
    return x.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, 16)


def test_report_to_image_scoring(tmp_path):
    rng = np.random.default_rng(0)
    rows, real, gen = [], [], []
    for i, report in enumerate(REFERENCES):
        r_im = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        g_im = rng.integers(0, 200, (16, 16), dtype=np.uint8)
        Image.fromarray(r_im).save(tmp_path / f"real{i}.png")
        Image.fromarray(g_im).save(tmp_path / f"gen{i}.png")
        real.append(r_im)
        gen.append(g_im)
        rows.append({"task": "report_to_image", "study_id": f"s{i}", "report": report,
                     "real_image": f"real{i}.png", "generated_image": str(tmp_path / f"gen{i}.png")})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append({"task": "report_to_image", "study_id": "bad", "report": "x", "generated_image": "broken.png"})
    pred = tmp_path / "pred.jsonl"
    _write(pred, rows)

    def classifier(images):  # probability of each finding: mean brightness, same for all
        return np.repeat(images.reshape(len(images), -1).mean(1, keepdims=True) / 255.0, 14, axis=1)

    cfg = suite.EvalConfig(fid_extractors=("pixels",), fid_resamples=5, resamples=30)
    results = evaluate.evaluate(pred, tmp_path / "out", cfg, features_fns={"pixels": _pixels}, classifier_fn=classifier)
    res = results["report_to_image"]
    assert res["n_studies"] == 5 and len(res["skipped_images"]) == 1
    fd = res["fid"]["pixels"]
    assert fd["value"] == pytest.approx(frechet.frechet_distance(_pixels(np.stack(real)), _pixels(np.stack(gen))))
    assert fd["n_real"] == fd["n_generated"] == 5 and fd["feature_dim"] == 16
    assert res["conditional"]["counts"]["n_requested/Cardiomegaly"] == 1
    assert Image.open(tmp_path / "out" / "image_grid.png").size == (5 * 128, 256)
    assert "Table II" in (tmp_path / "out" / "report_card.md").read_text()
    with pytest.raises(ValueError, match="no feature extractor"):
        evaluate.evaluate(pred, tmp_path / "out2", suite.EvalConfig(fid_extractors=("phi",)), classifier_fn=classifier)


@pytest.mark.slow
def test_generation_from_a_checkpoint(tmp_path, compile_fast):
    """A tiny random stage-2 model saved as a checkpoint: load it, generate reports, images and
    VQA answers for phantom studies, and score the records."""
    import flax.linen as nn
    import jax

    from configs import stage1 as stage1_config
    from mavilt_jax import checkpointing
    from mavilt_jax.data import phantoms
    from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, train_bpe
    from mavilt_jax.evaluation import generate
    from mavilt_jax.stages import lm, multimodal
    from mavilt_jax.stages.base import TrainState
    from mavilt_jax.stages.text_pretrain import synthetic_report_texts

    text_dir = tmp_path / "text"
    ExtendedVocab(train_bpe(synthetic_report_texts(100, 0), 300), codebook_size=0, codes_per_image=0,
                  eos_token=BPE_EOS).save(text_dir / lm.VOCAB_DIR)
    config = stage1_config.get_config(f"runlocal,model=tiny,text={text_dir},res=32")
    config.stage = "stage2"
    config.vqgan.model.update(channel_multipliers=(1, 2, 2, 4), base_channels=8, embedding_dim=8, codebook_size=32,
                              norm_groups=4)  # 32 px -> 4 x 4 codes
    config.vqgan.allow_random = True
    config.sequence.max_len = 160
    workdir = tmp_path / "work"
    stage = multimodal.Stage2(config)
    stage.setup(str(workdir))
    # Random weights of the right shapes (no compiled init), saved as the training loop saves them.
    abstract = jax.eval_shape(stage.init_state, jax.random.key(0))
    rng = np.random.default_rng(0)
    fill = lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype)
    plain = lambda tree: jax.tree.map(fill, nn.unbox(tree))
    state = TrainState(step=np.int32(1), params=plain(abstract.params), opt_state=None, frozen=plain(abstract.frozen))
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), every_steps=1, keep=1, async_save=False)
    ckpt.save(1, state, force=True)
    ckpt.close()

    generator = generate.load_generator(config, str(workdir), generate.GenerationConfig(max_report_tokens=6, batch_size=2))
    leaf = lambda tree: jax.tree.leaves(tree)[0]
    np.testing.assert_array_equal(np.asarray(leaf(generator.params)), leaf(state.params))
    studies = [phantoms.generate_study(3, i, resolution=32) for i in range(2)]
    pred_dir = tmp_path / "pred"
    recs = generate.predict(generator, studies, pred_dir)
    by_task = records.group_records(recs).by_task
    assert len(by_task["report_generation"]) == 2 and len(by_task["report_to_image"]) == 2
    assert len(by_task["vqa"]) == sum(len(s["vqa"]) for s in studies)
    assert all(0.0 < r["p_yes"] < 1.0 for r in by_task["vqa"])
    for r in by_task["report_to_image"]:
        assert Image.open(pred_dir / r["generated_image"]).size == (32, 32)
    # Greedy report decoding is deterministic.
    codes = generator.encode(np.stack([s["image"][..., None] for s in studies]))
    assert generator.reports(codes) == [r["generation"] for r in by_task["report_generation"]]
    records.write_records(pred_dir / "predictions.jsonl", recs)
    cfg = suite.EvalConfig(meteor=False, nlg_resamples=2, resamples=10, fid_extractors=("pixels",), fid_resamples=2)
    pixels = lambda images: _pixels(np.stack([np.asarray(Image.fromarray(im).resize((16, 16))) for im in images]))
    results = evaluate.evaluate(pred_dir / "predictions.jsonl", tmp_path / "out", cfg, features_fns={"pixels": pixels})
    assert {"report_generation", "report_to_image", "vqa"} <= set(results)


def test_phi_scorers_from_a_cxr_encoder_workdir(tmp_path):
    """--phi_checkpoint: phi's embedding (Frechet features) and sigmoid outputs (classifier) of a
    saved CXR-encoder workdir, fed at its training size."""
    import jax

    from configs import cxr_encoder as cxr_encoder_config
    from mavilt_jax import checkpointing
    from mavilt_jax.models import cxr_encoder
    from mavilt_jax.stages import cxr_encoder as cxr_encoder_stage
    from mavilt_jax.stages.base import TrainState

    config = cxr_encoder_config.get_config("runlocal,arch=plain,res=32")
    config.model.widths = (4, 8)
    (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    model = cxr_encoder.CxrEncoder(cxr_encoder_stage.model_config(config))
    x = np.zeros((1, 32, 32, 1), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path)), every_steps=1, keep=1, async_save=False)
    ckpt.save(1, TrainState(step=np.int32(1), params=params, opt_state=None, frozen=None), force=True)
    ckpt.close()

    features_fns, classifier_fn = evaluate.phi_scorers(str(tmp_path))
    images = rng.integers(0, 256, size=(3, 64, 64), dtype=np.uint8)  # resized to phi's 32 px
    small = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in images])
    x = small[..., None].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(features_fns["phi"](images), model.apply({"params": params}, x, method=model.embed),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(classifier_fn(images), jax.nn.sigmoid(model.apply({"params": params}, x)),
                               rtol=1e-4, atol=1e-5)

"""The seams between stages, on the tiny main job's real checkpoints (`tiny_main_job` in conftest):

- text pretraining -> stage 1: the text rows kept exactly, the new rows by the configured rule of
  `extend_embeddings` (``code_embedding_init``), the anchor of Eq. 11 equal to the pretrained weights, the VQ-GAN (and phi)
  frozen and equal to their own stages' parameters, before and after training;
- VQ-GAN -> decoder tuning -> stage 1: the tuned VQ-GAN keeps the encoder and codebook (so every
  image's codes) and retrains the decoder; stage 1 uses the tuned one;
- stage 1 -> stage 2 (``init_from``): the frozen arrays carried over as they are, the parameters
  within three Adam steps of stage 1's;
- the training split encoded once before training with the VQ-GAN the step would use (stage 1:
  the VQ-GAN workdir's; stage 2: the one in stage 1's frozen arrays);
- every stage ran ``eval_step`` and ``periodic_eval`` inside the training loop;
- evaluation from a checkpoint through ``python -m mavilt_jax.evaluate``;
- stage 1 without a VQ-GAN checkpoint refuses to start.
Values are checked against numpy computations on the checkpoints, not against the stage code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from configs import stage1 as stage1_config
from mavilt_jax import checkpointing
from mavilt_jax.data import phantoms
from mavilt_jax.data.vocab import ExtendedVocab
from mavilt_jax.models import vqgan as vqgan_model
from mavilt_jax.stages import lm, multimodal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_arrays(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(x, np.float32) for p, x in flat}


def _assert_trees_equal(got, expected, what: str) -> None:
    got, expected = _tree_arrays(got), _tree_arrays(expected)
    assert got.keys() == expected.keys(), what
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{what} {k}")


def _bf16(x) -> np.ndarray:
    return np.asarray(np.asarray(x, np.float32).astype(jax.numpy.bfloat16), np.float32)


@pytest.fixture(scope="module")
def job(tiny_main_job):
    return tiny_main_job["workdir"]


def test_text_pretrain_to_stage1_handoff(job, tmp_path, compile_fast):
    config = ml_collections.ConfigDict(checkpointing.read_workdir_config(str(job / "stage1")))
    assert config.text_checkpoint == str(job / "text_pretrain") and config.loss.lambda_reg > 0
    stage = multimodal.Stage1(config)
    stage.setup(str(tmp_path))
    # As the loop does: one compiled init, unboxed, then the pretrained weights.
    state = stage.restore_pretrained(jax.jit(lambda r: nn.unbox(stage.init_state(r)))(jax.random.key(0)))

    text = jax.tree.map(np.asarray, checkpointing.load_subtree(str(job / "text_pretrain"), "params"))
    T, V = stage.layout.text_vocab_size, stage.layout.size
    assert text["embed"]["embedding"].shape[0] > T  # text pretraining's specials follow the text ids: trimmed
    embed, head = np.asarray(state.params["embed"]["embedding"]), np.asarray(state.params["lm_head"]["kernel"])
    assert embed.shape[0] == V and head.shape[1] == V
    # Pretrained text rows (and head columns) kept exactly.
    np.testing.assert_array_equal(embed[:T], text["embed"]["embedding"][:T])
    np.testing.assert_array_equal(head[:, :T], text["lm_head"]["kernel"][:, :T])
    # New rows (image codes, specials): by the job's configured rule.
    _assert_new_rows(state, text, stage.layout, config.code_embedding_init, _codebook(job))
    # Every other parameter is the text-pretrained one.
    rest = lambda p: {k: v for k, v in p.items() if k not in ("embed", "lm_head")}
    _assert_trees_equal(rest(state.params), rest(text), "LLM parameters")

    # The anchor of Eq. 11: the pretrained weights (text rows only), as a bf16 copy.
    anchor = _tree_arrays(state.frozen["anchor"])
    expected = {**{k: _bf16(v) for k, v in _tree_arrays(rest(text)).items()},
                "['embed']['embedding']": _bf16(text["embed"]["embedding"][:T]),
                "['lm_head']['kernel']": _bf16(text["lm_head"]["kernel"][:, :T])}
    assert anchor.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(anchor[k], expected[k], err_msg=k)

    # The frozen VQ-GAN and phi are their stages' trained parameters, at the start and after training.
    vqgan = checkpointing.load_subtree(str(job / "vqgan_decoder"), "params")
    phi = checkpointing.load_subtree(str(job / "cxr_encoder"), "params")
    _assert_trees_equal(state.frozen["vqgan"], vqgan, "frozen VQ-GAN at the start")
    _assert_trees_equal(state.frozen["phi"], phi, "frozen phi at the start")
    trained = checkpointing.load_subtree(str(job / "stage1"), "frozen")
    _assert_trees_equal(trained["vqgan"], vqgan, "frozen VQ-GAN after stage 1")
    _assert_trees_equal(trained["phi"], phi, "frozen phi after stage 1")
    _assert_trees_equal(trained["anchor"], state.frozen["anchor"], "anchor after stage 1")


def test_decoder_tuning_keeps_the_codes_and_retrains_the_drawing(job):
    before = _tree_arrays(checkpointing.load_subtree(str(job / "vqgan"), "params"))
    after = _tree_arrays(checkpointing.load_subtree(str(job / "vqgan_decoder"), "params"))
    assert before.keys() == after.keys()
    kept = [k for k in before if k.startswith("['encoder']") or k.startswith("['quantizer']['codebook']")
            or k.startswith("['quantizer']['proj_in']")]
    assert kept and len(kept) < len(before)
    for k in kept:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    moved = [k for k in before if k.startswith("['decoder']") and not np.array_equal(after[k], before[k])]
    assert moved, "decoder tuning left the decoder as it was"
    # Same codes for an image, through the tokenizer tool on each workdir.
    cfg, params = vqgan_model.load_vqgan(str(job / "vqgan"))
    _, tuned = vqgan_model.load_vqgan(str(job / "vqgan_decoder"))
    model = vqgan_model.VQGAN(cfg)
    image = vqgan_model.to_model_range(phantoms.generate_study(5, 0, resolution=cfg.image_size)["image"][None, ..., None])
    np.testing.assert_array_equal(model.apply({"params": tuned}, image, method="encode"),
                                  model.apply({"params": params}, image, method="encode"))
    # The run continued the earlier one: its config names it; the feature term is off, so no phi
    # is read (the earlier run's had one).
    config = checkpointing.read_workdir_config(str(job / "vqgan_decoder"))
    assert config["init_from"].endswith("/vqgan") and config["quantizer_restart"]["every"] == 0
    assert config["loss"]["lambda_feat"] == 0.0 and config["phi"]["checkpoint"] == ""
    assert checkpointing.read_workdir_config(str(job / "vqgan"))["phi"]["checkpoint"].endswith("/cxr_encoder")


def _codebook(job) -> np.ndarray:
    return np.asarray(checkpointing.load_subtree(str(job / "vqgan_decoder"), "params")["quantizer"]["codebook"],
                      np.float64)


def _assert_new_rows(state, text, layout, init, codebook: np.ndarray) -> None:
    """The appended embedding rows and head columns, checked in numpy against the text-pretrained
    ones: row = mean + noise_scale * std * z per dimension; "mean": z ~ N(0, 1) (|z| < 6);
    "codebook": the image codes' z, standardised per dimension, is an affine function of the
    VQ-GAN codebook (exact least-squares fit on [codebook, 1]); specials as in "mean"."""
    T, C = layout.text_vocab_size, layout.codebook_size
    embed, head = np.asarray(state.params["embed"]["embedding"]), np.asarray(state.params["lm_head"]["kernel"])
    for new, old in ((embed[T:], text["embed"]["embedding"][:T]), (head[:, T:].T, text["lm_head"]["kernel"][:, :T].T)):
        old = np.asarray(old, np.float64)
        z = (np.asarray(new, np.float64) - old.mean(axis=0)) / (init["noise_scale"] * old.std(axis=0))
        codes, specials = z[:C], z[C:]
        assert np.all(np.abs(specials) < 6) and np.all(specials.std(axis=0) > 0)
        if init["rule"] == "mean":
            assert np.all(np.abs(codes) < 6) and np.all(codes.std(axis=0) > 0)  # the noise tells the codes apart
            continue
        np.testing.assert_allclose(codes.mean(axis=0), 0.0, atol=1e-3)
        np.testing.assert_allclose(codes.std(axis=0), 1.0, atol=1e-3)
        design = np.concatenate([codebook, np.ones((C, 1))], axis=1)  # [C, E + 1], E + 1 < C
        assert design.shape[1] < C
        fit = design @ np.linalg.lstsq(design, codes, rcond=None)[0]
        np.testing.assert_allclose(fit, codes, atol=1e-3)


@pytest.mark.parametrize("rule,noise_scale", [("mean", 0.01), ("codebook", 1.0)])
def test_code_embedding_init_reaches_the_new_rows(job, tmp_path, compile_fast, rule, noise_scale):
    """``code_embedding_init`` of the stage-1 config decides the image-code rows stage 1 starts from."""
    config = ml_collections.ConfigDict(checkpointing.read_workdir_config(str(job / "stage1")))
    config.code_embedding_init = ml_collections.ConfigDict(dict(rule=rule, noise_scale=noise_scale))
    stage = multimodal.Stage1(config)
    stage.setup(str(tmp_path))
    state = stage.restore_pretrained(jax.jit(lambda r: nn.unbox(stage.init_state(r)))(jax.random.key(0)))
    text = jax.tree.map(np.asarray, checkpointing.load_subtree(str(job / "text_pretrain"), "params"))
    _assert_new_rows(state, text, stage.layout, config.code_embedding_init, _codebook(job))
    if rule == "mean":  # the other rule's check must fail on these rows (the test can tell them apart)
        with pytest.raises(AssertionError):
            _assert_new_rows(state, text, stage.layout, dict(rule="codebook", noise_scale=noise_scale), _codebook(job))


def _adam_bound(config: ml_collections.ConfigDict, steps: int) -> float:
    """Largest per-entry change ``steps`` AdamW updates can make: lr * (|m_hat / sqrt(v_hat)| + wd * |theta|).

    By Cauchy-Schwarz |m_hat / sqrt(v_hat)| <= sqrt(sum_i w_i^2 / u_i) over the bias-corrected
    weights w_i (b1) and u_i (b2) of the gradients so far.
    """
    o = config.optimizer
    ratio = 0.0
    for t in range(1, steps + 1):
        w = [(1 - o.b1) * o.b1 ** (t - i) / (1 - o.b1**t) for i in range(1, t + 1)]
        u = [(1 - o.b2) * o.b2 ** (t - i) / (1 - o.b2**t) for i in range(1, t + 1)]
        ratio = max(ratio, math.sqrt(sum(a * a / b for a, b in zip(w, u))))
    return steps * o.learning_rate * (ratio + o.weight_decay * 10.0)  # |theta| < 10 for these models


def test_stage1_to_stage2_init_from(job):
    config = ml_collections.ConfigDict(checkpointing.read_workdir_config(str(job / "stage2")))
    assert config.init_from == str(job / "stage1") and not config.text_checkpoint and not config.model.pretrained
    s1 = _tree_arrays(checkpointing.load_subtree(str(job / "stage1"), "params"))
    s2 = _tree_arrays(checkpointing.load_subtree(str(job / "stage2"), "params"))
    assert max(np.abs(v).max() for v in s1.values()) < 10.0
    bound = _adam_bound(config, config.total_steps)
    assert s1.keys() == s2.keys()
    moved = max(float(np.abs(s2[k] - s1[k]).max()) for k in s1)
    assert 0 < moved <= bound, (moved, bound)
    # The frozen arrays come from stage 1 as they are (anchor, VQ-GAN, phi).
    _assert_trees_equal(checkpointing.load_subtree(str(job / "stage2"), "frozen"),
                        checkpointing.load_subtree(str(job / "stage1"), "frozen"), "stage 2 frozen arrays")
    v1, v2 = ExtendedVocab.load(job / "stage1" / lm.VOCAB_DIR), ExtendedVocab.load(job / "stage2" / lm.VOCAB_DIR)
    assert v1.layout == v2.layout and v1.encode_text("no acute disease") == v2.encode_text("no acute disease")


@pytest.mark.parametrize("step", ["stage1", "stage2"])
def test_training_split_is_encoded_once_by_the_steps_vqgan(job, tmp_path, compile_fast, step):
    config = ml_collections.ConfigDict(checkpointing.read_workdir_config(str(job / step)))
    assert config.loss.lambda_recon > 0 and config.data.precompute_codes_gib > 0
    stage = {"stage1": multimodal.Stage1, "stage2": multimodal.Stage2}[step](config)
    stage.setup(str(tmp_path))
    R = stage.vq_config.image_size
    studies = []
    for i in range(3):
        study = phantoms.generate_study(5, i, resolution=R)
        studies.append({**study, "image": study["image"][..., None]})
    if step == "stage1":
        expected = checkpointing.load_subtree(str(job / "vqgan_decoder"), "params")
    else:
        # Stage 2's step uses the VQ-GAN in stage 1's frozen arrays, whatever its tokenizer
        # workdir holds: a different VQ-GAN there must not reach the codes.
        expected = checkpointing.load_subtree(str(job / "stage1"), "frozen")["vqgan"]
        stage._vq_params = jax.tree.map(lambda a: np.asarray(a) * 0.5, expected)
    source = stage.prepare_train_source(studies)
    assert isinstance(source, multimodal.PrecomputedCodes) and len(source) == 3

    model = vqgan_model.VQGAN(stage.vq_config)
    for study, example in zip(studies, (source[i] for i in range(3))):
        image = vqgan_model.to_model_range(study["image"], R)[None]
        codes = model.apply({"params": expected}, image, method="encode")
        np.testing.assert_array_equal(example["codes"], np.asarray(codes[0]))
        decoded = model.apply({"params": expected}, codes, method="decode")
        np.testing.assert_allclose(example["recon_target"], np.asarray(decoded[0]), atol=1e-5)
        assert "image" not in example and example["findings"] == study["findings"]

    # Encoded in the step instead: a split over the memory budget, or a run too short to revisit it.
    config.data.precompute_codes_gib = 1e-9
    assert stage.prepare_train_source(studies) is studies
    config.data.precompute_codes_gib, config.total_steps = 4.0, 0
    assert stage.prepare_train_source(studies) is studies


def test_every_stage_evaluates_and_samples_in_the_loop(job):
    expected_eval = {"cxr_encoder": {"loss"}, "judge": {"loss"}, "vqgan": {"psnr", "ssim", "l1"},
                     "vqgan_decoder": {"psnr", "ssim", "l1"},
                     "text_pretrain": {"task_loss", "text_ce"}, "stage1": {"task_loss", "text_ce", "image_ce"},
                     "stage2": {"task_loss", "text_ce", "image_ce"}}
    for name, keys in expected_eval.items():
        result = json.loads((job / name / "result.json").read_text())
        step = result["step"]
        assert keys <= set(result["eval"]) and all(np.isfinite(result["eval"][k]) for k in keys), name
        if name in ("cxr_encoder", "judge"):  # periodic_eval: per-finding AUROC in [0, 1]
            auroc = json.loads((job / name / f"auroc_{step}.json").read_text())
            assert auroc and all(0.0 <= v <= 1.0 for v in auroc.values()), name
        elif name.startswith("vqgan"):  # periodic_eval: true | reconstruction grid
            assert (job / name / "samples" / f"reconstructions_{step}.png").stat().st_size > 0
        else:  # periodic_eval: greedy samples of the LLM
            samples = (job / name / "samples" / f"step_{step}.txt").read_text()
            assert samples.count("## report_") == config_num_samples(job, name), name
    # Stage-1/2 eval losses: next-token cross-entropy of a near-uniform tiny model, about log(V).
    vocab = ExtendedVocab.load(job / "stage1" / lm.VOCAB_DIR)
    for name in ("stage1", "stage2"):
        result = json.loads((job / name / "result.json").read_text())
        ce = result["eval"]["task_loss"]
        assert abs(ce - math.log(vocab.size)) < 1.0, (name, ce, math.log(vocab.size))
        # The reading curve: the text CE with another study's image, and the gain, at every evaluation.
        ev = result["eval"]
        assert ev["image_gain"] == pytest.approx(ev["text_ce_other_image"] - ev["text_ce"], abs=1e-5), name
        history = [json.loads(line) for line in (job / name / "eval_history.jsonl").read_text().splitlines()]
        assert history[-1]["step"] == result["step"] and history[-1]["text_ce"] == pytest.approx(ev["text_ce"]), name
        assert [h["step"] for h in history] == sorted({h["step"] for h in history}), name


def config_num_samples(job, name: str) -> int:
    return int(checkpointing.read_workdir_config(str(job / name))["num_samples"])


def test_evaluate_from_a_checkpoint_through_the_cli(job, tmp_path):
    out = tmp_path / "eval"
    # --config: the stage-2 run's own config (as saved in its workdir).
    config_file = tmp_path / "stage2_config.py"
    config_file.write_text("import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
                           f"    return ml_collections.ConfigDict(json.load(open({str(job / 'stage2' / 'config.json')!r})))\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mavilt_jax.evaluate", f"--config={config_file}", f"--checkpoint={job / 'stage2'}",
         f"--workdir={out}",
         f"--phi_checkpoint={job / 'cxr_encoder'}", "--split=test", "--max_studies=3", "--max_report_tokens=8",
         "--meteor=false", "--fid_extractors=phi", "--resamples=10", "--nlg_resamples=2", "--fid_resamples=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert len({r["study_id"] for r in records}) == 3
    assert {r["task"] for r in records} == {"report_generation", "report_to_image", "vqa"}
    assert "Table I" in (out / "report_card.md").read_text()
    ce = results["report_generation"]["clinical_efficacy"]["f1_micro"]
    assert ce["n"] == 3 and 0.0 <= ce["value"] <= 1.0


def test_stage1_without_a_vqgan_checkpoint_refuses_to_start(tmp_path):
    config = stage1_config.config(runlocal=True, model="tiny", text=str(tmp_path / "text"))
    with pytest.raises(ValueError, match=r"needs a trained VQ-GAN.*tokenizer=DIR.*vqgan.allow_random"):
        multimodal.Stage1(config).setup(str(tmp_path / "work"))


def test_code_reader_ceiling_on_the_main_jobs_test_records(job):
    """The evaluation's linear reader of the codes (`pipeline_eval.code_reader_ceiling`) on the
    tiny main job's stage 2, training split and test predictions: its CE F1 is scikit-learn's
    micro-F1 of the labels the probe writes against the labeler's on the same references, study
    by study whatever the order of the records, and it answers every test question."""
    from sklearn.metrics import f1_score

    from mavilt_jax.data import labels as L
    from mavilt_jax.data import sequences
    from mavilt_jax.evaluation import clinical, generate, labeler, pipeline_eval, probe, suite

    config = ml_collections.ConfigDict(checkpointing.read_workdir_config(str(job / "stage2")))
    generator = generate.load_generator(config, str(job / "stage2"))
    examples = generate.split_examples(generator, config, "test", 8)
    train_source = generator.stage.source("train")
    train_examples = [train_source[i] for i in range(len(train_source))]

    def encode(studies):
        return generator.encode(np.stack([np.asarray(e["image"]).reshape(np.asarray(e["image"]).shape[:2] + (1,))
                                          for e in studies]))

    codes, train_codes = encode(examples), encode(train_examples)
    records = [json.loads(line) for line in (job / "predictions" / "predictions.jsonl").read_text().splitlines()]
    cfg = suite.EvalConfig(resamples=20, nlg_resamples=2, fid_resamples=2, meteor=False, fid_extractors=())
    out = pipeline_eval.code_reader_ceiling(generator, train_examples, train_codes, examples, codes, records, cfg)
    shuffled = pipeline_eval.code_reader_ceiling(generator, train_examples, train_codes, examples, codes,
                                                 records[::-1], cfg)

    train_positive = clinical.binarise(labeler.label_reports([generator.builder.report_text(e)
                                                              for e in train_examples]), cfg.uncertain)
    written = probe.probe_report_labels(train_codes, train_positive, codes, generator.layout.codebook_size)
    study_ids = [sequences.as_text(e["study_id"]) for e in examples]
    reports = {r["study_id"]: r["reference"] for r in records if r["task"] == "report_generation"}
    reference = clinical.binarise(labeler.label_reports([reports[s] for s in study_ids]), cfg.uncertain)
    expected = f1_score(reference.ravel(), written.ravel(), zero_division=0)
    for result in (out, shuffled):
        ce = result["report_generation"]["clinical_efficacy"]["f1_micro"]
        assert ce["value"] == pytest.approx(expected) and ce["n"] == len(study_ids)
    questions = [r for r in records if r["task"] == "vqa"]
    assert out["vqa"]["counts"]["questions"] == len(questions) > 0
    assert (out["vqa"]["metrics"]["accuracy"]["value"]
            == pytest.approx(shuffled["vqa"]["metrics"]["accuracy"]["value"]))
    assert written.shape == (len(study_ids), L.NUM_OBSERVATIONS)

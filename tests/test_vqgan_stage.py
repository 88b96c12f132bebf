"""The VQ-GAN stage: overfitting, re-encoding stability, dead-code restarts, the adaptive GAN
weight against plain autodiff, the shared training loop end to end, load_vqgan and the CLI."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import vqgan as vqgan_config
from mavilt_jax import vqgan_codes
from mavilt_jax.data import phantoms
from mavilt_jax.evaluation import image_metrics
from mavilt_jax.models import vqgan
from mavilt_jax.stages import vqgan as vqgan_stage

# Conv nets compile slowly on 2 cores; these tests check values, not XLA optimisations.
pytestmark = pytest.mark.usefixtures("compile_fast")


def _studies(n: int, resolution: int = 32) -> list[dict]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        findings = phantoms.sample_findings(rng)
        out.append({"image": phantoms.render(findings, resolution, rng)[..., None],
                    "labels": phantoms.findings_to_labels(findings)})
    return out


def _config(**loss):
    config = vqgan_config.get_config("runlocal")
    config.model.update(image_size=32, base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                        embedding_dim=8, codebook_size=32, code_dim=4, norm_groups=4)
    config.discriminator.update(base_channels=8, num_layers=1, norm_groups=4)
    config.phi.update(allow_random=True, image_size=32, arch="plain", widths=(4, 8))
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 0
    config.loss.update(lambda_grad=1.0, lambda_feat=0.0, gan_weight=0.0, disc_start=0)
    config.loss.update(**loss)
    config.quantizer_restart.every = 0
    config.disable_most_optimizations = True  # the training loop sets XLA's flag from the config
    return config


class InMemoryVQGANStage(vqgan_stage.VQGANStage):
    """Reads a handful of phantom studies instead of the TFDS builder."""

    def data_source(self, split):
        return _studies(8 if split == "train" else 4)


def test_overfit_raises_psnr_and_reencoding_is_stable():
    config = _config()
    config.total_steps = 80
    stage = vqgan_stage.VQGANStage(config)
    batch = {"image": np.stack([stage.preprocess(s, None)["image"] for s in _studies(4)])}
    state = stage.init_state(jax.random.key(0))
    step = jax.jit(stage.train_step)
    first = None
    for i in range(80):
        state, m = step(state, batch, jax.random.key(i))
        first = first if first is not None else float(m["psnr"])
    last = float(m["psnr"])
    assert last > first + 6.0, (first, last)

    model = stage.model
    variables = {"params": state.params}
    codes = jax.jit(lambda x: model.apply(variables, x, method=model.encode))(batch["image"])
    decoded = jax.jit(lambda c: model.apply(variables, c, method=model.decode))(codes)
    recodes = jax.jit(lambda x: model.apply(variables, x, method=model.encode))(jnp.clip(decoded, -1, 1))
    agreement = float(jnp.mean(codes == recodes))
    assert agreement >= 0.7, agreement  # 0.75 after these 80 steps; it rises with training
    # PSNR of the decoded codes equals the step's own measurement of the forward pass.
    np.testing.assert_allclose(image_metrics.psnr(batch["image"], jnp.clip(decoded, -1, 1)),
                               jax.jit(stage.eval_step)(state, batch)["psnr"], rtol=1e-4)


def test_dead_codes_restart_from_batch_latents():
    config = _config()
    config.quantizer_restart.update(every=1, threshold=0.5, decay=0.0)
    stage = vqgan_stage.VQGANStage(config)
    batch = {"image": np.stack([stage.preprocess(s, None)["image"] for s in _studies(2)])}
    state = stage.init_state(jax.random.key(0))
    _, aux = jax.jit(lambda p, x: stage.model.apply({"params": p}, x))(state.params, batch["image"])
    counts = np.asarray(aux["code_counts"])
    latents = np.asarray(aux["lookup_latents"])
    new_state, m = jax.jit(stage.train_step)(state, batch, jax.random.key(1))
    dead = counts < 0.5  # decay 0: the EMA is this batch's counts
    assert int(m["codes_restarted"]) == dead.sum() > 0
    new_codebook = np.asarray(new_state.params["quantizer"]["codebook"])
    for row in new_codebook[dead]:
        assert np.min(np.linalg.norm(latents - row, axis=-1)) < 1e-5  # a latent of this batch
    for row in new_codebook[~dead]:
        assert np.min(np.linalg.norm(latents - row, axis=-1)) > 1e-5  # updated by the optimizer


def test_adaptive_weight_and_feature_term_against_plain_autodiff():
    config = _config(lambda_feat=0.5, gan_weight=0.1, disc_start=0)
    stage = vqgan_stage.VQGANStage(config)
    batch = {"image": np.stack([stage.preprocess(s, None)["image"] for s in _studies(2)])}
    state = stage.init_state(jax.random.key(0))
    disc_before = state.extra["disc_params"]

    def reference(params):
        def recon_of(p):
            return stage.model.apply({"params": p}, batch["image"])[0]

        nll_grad = jax.grad(lambda p: stage.reconstruction_loss(state.frozen, batch["image"], recon_of(p))[0])(params)
        g_grad = jax.grad(lambda p: stage.g_loss_fn(stage.disc.apply({"params": disc_before}, recon_of(p))))(params)
        k = lambda g: g["decoder"]["conv_out"]["kernel"]  # noqa: E731
        return jnp.linalg.norm(k(nll_grad)) / (jnp.linalg.norm(k(g_grad)) + 1e-4)

    expected = jax.jit(reference)(state.params)
    new_state, m = jax.jit(stage.train_step)(jax.tree.map(jnp.copy, state), batch, jax.random.key(1))
    np.testing.assert_allclose(m["adaptive_weight"], expected, rtol=1e-3)
    assert float(m["feat_term"]) > 0 and float(m["disc_factor"]) == 1.0
    assert np.isfinite(float(m["disc_loss"]))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), disc_before, new_state.extra["disc_params"])
    assert any(jax.tree.leaves(changed))  # the discriminator took a step in the same jitted call


@pytest.mark.slow
def test_training_loop_load_vqgan_and_cli(tmp_path, capsys):
    from mavilt_jax import train

    config = _config(gan_weight=0.1, disc_start=2)
    config.stage = "test_vqgan_stage:InMemoryVQGANStage"
    config.total_steps = 4
    config.batch_size = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint.every_steps = 4
    config.checkpoint.async_save = False
    config.num_samples = 2
    workdir = str(tmp_path / "tok")
    result = train.train_and_evaluate(config, workdir)
    assert result["step"] == 4 and np.isfinite(result["eval"]["psnr"])
    assert os.path.isfile(os.path.join(workdir, "samples", "reconstructions_4.png"))

    cfg, params = vqgan.load_vqgan(workdir)
    assert cfg.image_size == 32 and cfg.codebook_size == 32 and cfg.code_dim == 4
    image = _studies(1)[0]["image"]
    Image.fromarray(image[..., 0]).save(tmp_path / "x.png")
    assert vqgan_codes.main(["encode", "--checkpoint", workdir, "--image", str(tmp_path / "x.png"),
                             "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    model = vqgan.VQGAN(cfg)
    expected = model.apply({"params": params}, vqgan.to_model_range(image[None]), method=model.encode)[0]
    np.testing.assert_array_equal(codes, expected)
    assert vqgan_codes.main(["decode", "--checkpoint", workdir, "--codes", str(tmp_path / "codes.npy"),
                             "--out", str(tmp_path / "y.png")]) == 0
    decoded = np.asarray(Image.open(tmp_path / "y.png"))
    expected_pixels = vqgan.to_uint8(model.apply({"params": params}, codes[None], method=model.decode))[0, :, :, 0]
    # Up to 1 grey level: the CLI decodes jitted, the reference op by op, and a pixel on a rounding
    # boundary may land either side.
    np.testing.assert_allclose(decoded.astype(int), expected_pixels.astype(int), rtol=0, atol=1)

    # Pre-tokenization: the builder stores each study's codes beside its text and labels.
    from mavilt_jax.data import pipeline
    from tfds_builders.pretokenized import Pretokenized, make_config

    data_dir = str(tmp_path / "tfds")
    source = pipeline.load_source("synthetic_cxr", "validation", data_dir=data_dir, builder_config="r32_tiny")
    builder = Pretokenized(config=make_config("tiny", tokenizer_checkpoint=workdir, source_config="r32_tiny",
                                              source_data_dir=data_dir, splits=("validation",), batch_size=3),
                           data_dir=data_dir)
    builder.download_and_prepare()
    pretokenized = builder.as_data_source(split="validation")
    assert len(pretokenized) == len(source) == 4
    by_id = {pretokenized[i]["study_id"]: pretokenized[i] for i in range(4)}
    for i in range(4):
        original = source[i]
        row = by_id[original["study_id"]]
        expected = model.apply({"params": params}, vqgan.to_model_range(np.asarray(original["image"])[None]),
                               method=model.encode)[0]
        np.testing.assert_array_equal(row["codes"], expected)
        np.testing.assert_array_equal(row["labels"], original["labels"])
        assert row["findings"] == original["findings"] and len(row["vqa"]["question"]) == len(original["vqa"]["question"])

    # Bad arguments: a message and exit status 2, no traceback.
    np.save(tmp_path / "bad.npy", np.full(5, 99))
    for argv, message in [
        (["encode", "--checkpoint", str(tmp_path / "missing"), "--image", "x", "--out", "c.npy"], "not a directory"),
        (["encode", "--checkpoint", workdir, "--image", str(tmp_path / "nope.png"), "--out", "c.npy"], "does not exist"),
        (["decode", "--checkpoint", workdir, "--codes", str(tmp_path / "bad.npy"), "--out", "y.png"], "must hold 64"),
        (["decode", "--checkpoint", workdir, "--codes", str(tmp_path / "codes.npy"), "--out", "/no/such/dir/y.png"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            vqgan_codes.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_old_cli_name_runs_the_vqgan_codes_tool_with_a_deprecation_warning(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    sys.modules.pop("mavilt_jax.tokenize_cli", None)
    with pytest.warns(DeprecationWarning, match="mavilt_jax.vqgan_codes"):
        from mavilt_jax import tokenize_cli
    assert tokenize_cli.main is vqgan_codes.main and tokenize_cli.UsageError is vqgan_codes.UsageError
    # `python -m mavilt_jax.tokenize_cli ...` as a user types it: a warning line, then the tool.
    monkeypatch.setattr(sys, "argv", ["tokenize_cli", "encode", "--checkpoint", str(tmp_path / "missing"),
                                      "--image", "x.png", "--out", str(tmp_path / "c.npy")])
    monkeypatch.delitem(sys.modules, "mavilt_jax.tokenize_cli")  # run as a script, not the imported module
    with pytest.warns(DeprecationWarning), pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mavilt_jax.tokenize_cli", run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warning: python -m mavilt_jax.tokenize_cli is deprecated; use python -m mavilt_jax.vqgan_codes"
    assert err[1].startswith("python -m mavilt_jax.vqgan_codes: error: --checkpoint") and "not a directory" in err[1]


def test_clinical_vqgan_without_phi_refuses_to_start():
    # lambda_feat > 0 (Eq. 4's feature term) needs the trained CXR encoder phi; no random stand-in.
    config = vqgan_config.config(runlocal=True, **{"loss.lambda_feat": 0.1})
    assert not config.phi.checkpoint
    with pytest.raises(ValueError, match=r"lambda_feat > 0 needs phi.checkpoint"):
        vqgan_stage.VQGANStage(config)


def test_the_default_without_phi_says_the_feature_term_is_off(capsys):
    # configs/vqgan.py sets lambda_feat = 0 when no phi= is given: the stage says so on the terminal,
    # and stays silent when the term is on or when the ablation turns both clinical terms off.
    vqgan_stage.VQGANStage(vqgan_config.config(runlocal=True))
    assert "Eq. 4's feature term is off" in capsys.readouterr().out
    vqgan_stage.VQGANStage(_config(lambda_feat=0.1))
    vqgan_stage.VQGANStage(vqgan_config.config(runlocal=True, clinical=False))
    assert "feature term" not in capsys.readouterr().out


def test_decoder_tuning_continues_a_run_with_its_codes_fixed(tmp_path):
    from mavilt_jax import checkpointing, train

    def run(config, workdir, steps):
        config.stage = "test_vqgan_stage:InMemoryVQGANStage"
        config.update(total_steps=steps, batch_size=4, log_every_steps=steps, eval_every_steps=steps, num_samples=2)
        config.checkpoint.update(every_steps=steps, async_save=False)
        return train.train_and_evaluate(config, str(workdir))

    first = tmp_path / "vqgan"
    run(_config(gan_weight=0.1, disc_start=0), first, 3)
    tuned = vqgan_config.config(runlocal=True, decoder_of=str(first))
    # The variant's switches, on this test's small shapes (and its GAN weight, restarts off already).
    config = _config(gan_weight=0.1, disc_start=0)
    config.update(init_from=tuned.init_from)
    config.optimizer.freeze_patterns = tuned.optimizer.freeze_patterns
    assert tuned.quantizer_restart.every == 0 and tuned.loss.disc_start == 0 and tuned.loss.lambda_feat == 0.0

    # The state the loop starts from: the first run's generator, discriminator and code statistics.
    stage = InMemoryVQGANStage(config)
    state = stage.init_state(jax.random.key(1))
    state = state.replace(params=checkpointing.load_subtree(str(first), "params"))
    started = stage.continue_from(state, str(first))
    saved_extra = checkpointing.load_subtree(str(first), "extra")
    for key in ("disc_params", "code_ema"):
        jax.tree.map(np.testing.assert_array_equal, started.extra[key], saved_extra[key])

    second = tmp_path / "decoder"
    run(config, second, 3)
    before = checkpointing.load_subtree(str(first), "params")
    after = checkpointing.load_subtree(str(second), "params")
    jax.tree.map(np.testing.assert_array_equal, after["encoder"], before["encoder"])
    for key in ("codebook", "proj_in"):
        jax.tree.map(np.testing.assert_array_equal, after["quantizer"][key], before["quantizer"][key])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), after["decoder"], before["decoder"]))
    assert all(changed), "every decoder parameter gets updates"

    # A VQ-GAN of another shape cannot be continued; a phi without the feature term is refused.
    other = _config()
    other.model.codebook_size = 16
    with pytest.raises(ValueError, match="differs from config.model"):
        InMemoryVQGANStage(other).continue_from(InMemoryVQGANStage(other).init_state(jax.random.key(0)), str(first))
    with pytest.raises(ValueError, match="phi= is used only with the feature term"):
        vqgan_config.config(runlocal=True, decoder_of=str(first), phi="/phi")

"""Inference on your own files: `mavilt_jax.load`, the generate CLI and the export bundle, on the
tiny main job's model (`tiny_main_job` in conftest.py).

Values are checked, not only exit codes: the API's greedy reports and P(yes) equal the evaluation
harness's (`evaluation.generate.Generator`, a separate code path over the same stage), the CLI
writes what the API returns, the same seed gives the same report and image, the bundle gives the
workdir's outputs, and its Hugging Face copy gives our decoder's logits in transformers.
Set MAVILT_TEST_WORKDIR to a finished main-job (or stage-2) workdir to skip running the main job.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mavilt_jax
from mavilt_jax import export, generate, image_io, inference

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Most tests here read the tiny main job's model (unless MAVILT_TEST_WORKDIR is set): run after it.
pytestmark = pytest.mark.tiny_main_job


@pytest.fixture(scope="module")
def workdir(request) -> pathlib.Path:
    given = os.environ.get("MAVILT_TEST_WORKDIR")
    return pathlib.Path(given) if given else pathlib.Path(request.getfixturevalue("tiny_main_job")["workdir"])


@pytest.fixture(scope="module")
def model(workdir) -> inference.Model:
    return mavilt_jax.load(workdir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A grayscale PNG, an RGB JPEG-free PNG of another size and a MONOCHROME1 DICOM (the same film)."""
    from test_image_io import write_dicom

    folder = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(3)
    film = (np.linspace(0, 1, 96)[None, :] * np.linspace(0.3, 1, 96)[:, None] * 220).astype(np.uint8)
    film = np.clip(film + rng.integers(0, 30, film.shape), 0, 255).astype(np.uint8)
    film[0, 0], film[0, 1] = 0, 255  # spans [0, 255]: the DICOM's min-max scaling is then the identity
    Image.fromarray(film).save(folder / "gray.png")
    Image.fromarray(np.stack([film[:, 10:90]] * 3, -1)).save(folder / "rgb.png")
    write_dicom(folder / "film.dcm", 255 - film, photometric="MONOCHROME1")  # reads back as `film`
    return {"gray": folder / "gray.png", "rgb": folder / "rgb.png", "dicom": folder / "film.dcm", "folder": folder}


def _reference_generator(model: inference.Model):
    """The evaluation harness's generator over the same stage and parameters."""
    from mavilt_jax.evaluation import generate as eval_generate
    from mavilt_jax.models import vqgan

    model.stage.vq_config, model.stage.vqgan = model.vq_config, vqgan.VQGAN(model.vq_config)
    return eval_generate.Generator(model.stage, model.params, model.vq_params, eval_generate.GenerationConfig())


def test_api_matches_the_evaluation_harness(model, images):
    assert model.config.stage == "stage2"
    pixels = model.preprocess(images["gray"])
    assert pixels.shape == (model.image_size, model.image_size) and pixels.dtype == np.uint8
    # the DICOM (MONOCHROME1 of the inverted film) is the same radiograph as the PNG
    np.testing.assert_array_equal(model.preprocess(images["dicom"]), pixels)
    reference = _reference_generator(model)
    codes = reference.encode(pixels[None, :, :, None])
    np.testing.assert_array_equal(model.encode([images["gray"]]), codes)
    assert model.report(images["gray"]) == reference.reports(codes)[0]
    questions = ["Is there a pleural effusion?", "Which side is the pneumothorax on?"]
    answers = model.answers(images["gray"], questions)
    ref_text, ref_p_yes = reference.answers(np.repeat(codes, 2, 0), [{"question": q} for q in questions])
    assert [a.text for a in answers] == ref_text
    np.testing.assert_allclose(answers[0].p_yes, ref_p_yes[0], rtol=1e-4)
    assert 0.0 < answers[0].p_yes < 1.0 and answers[1].p_yes is None  # P(yes) only for the yes/no question
    assert model.answer(pixels, questions[0]) == answers[0]  # arrays and paths alike


def test_same_seed_same_outputs(model, images):
    sampled = dict(method="sample", temperature=1.0, top_k=20, top_p=0.95, max_new_tokens=24)
    first = model.report(images["gray"], seed=5, **sampled)
    assert model.report(images["gray"], seed=5, **sampled) == first
    assert isinstance(model.report(images["gray"], method="beam", beams=2, max_new_tokens=16), str)
    a = model.image("Small left pleural effusion.", seed=1, num_samples=2, guidance_scale=3.0)
    assert a.shape == (2, model.image_size, model.image_size) and a.dtype == np.uint8
    np.testing.assert_array_equal(model.image("Small left pleural effusion.", seed=1, num_samples=2), a)
    assert not np.array_equal(model.image("Small left pleural effusion.", seed=2, num_samples=2), a)
    # the VQ-GAN reconstruction is the decoding of the codes
    np.testing.assert_array_equal(model.reconstruct(images["gray"]), model.decode(model.encode([images["gray"]]))[0])


def test_cli_writes_what_the_api_returns(model, workdir, images, tmp_path, capsys):
    files = [images["gray"], images["rgb"], images["dicom"]]
    assert generate.main(["report", f"--checkpoint={workdir}", str(images["folder"]), f"--out={tmp_path / 'r.jsonl'}"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [pathlib.Path(r["image"]).name for r in rows] == sorted(p.name for p in files)
    by_name = {pathlib.Path(r["image"]).name: r["report"] for r in rows}
    assert [by_name[p.name] for p in files] == model.reports(files)
    capsys.readouterr()

    assert generate.main(["image", f"--checkpoint={workdir}", "--report=Small left pleural effusion.", "--seed=1",
                          "--num_samples=2", f"--out_dir={tmp_path / 'gen'}"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "gen" / f"generated_{i}.png")) for i in range(2)])
    np.testing.assert_array_equal(written, model.image("Small left pleural effusion.", seed=1, num_samples=2))

    capsys.readouterr()
    assert generate.main(["vqa", f"--checkpoint={workdir}", str(images["dicom"]), "--question=Is there a pleural effusion?",
                          "--question=Which abnormalities are present?"]) == 0
    out = capsys.readouterr().out
    answers = model.answers(images["dicom"], ["Is there a pleural effusion?", "Which abnormalities are present?"])
    assert f"A: {answers[0].text}  (P(yes) = {answers[0].p_yes:.3f})" in out
    assert f"A: {answers[1].text}\n" in out


def test_cli_as_a_process(model, workdir, images):
    """The real command: exit 0 and the API's report on stdout; a user error is one line, status 2."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "mavilt_jax.generate", "report", f"--checkpoint={workdir}", str(images["dicom"])]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == model.report(images["dicom"])
    bad = subprocess.run(cmd[:-1] + [str(images["folder"] / "nope.png")], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, env=env, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"python -m mavilt_jax.generate report: error: "
                                               f"{str(images['folder'] / 'nope.png')!r} does not exist"]


def test_export_bundle_gives_the_workdir_outputs(model, workdir, images, tmp_path):
    meta = export.export(workdir / "stage2", tmp_path / "bundle")
    assert meta["bytes"]["params_orbax"] < meta["bytes"]["training_checkpoint_step"]  # no optimizer state
    bundle = mavilt_jax.load(tmp_path / "bundle")
    assert bundle.report(images["gray"]) == model.report(images["gray"])
    np.testing.assert_array_equal(bundle.image("No acute findings.", seed=3), model.image("No acute findings.", seed=3))
    assert bundle.answer(images["gray"], "Is there cardiomegaly?") == model.answer(images["gray"], "Is there cardiomegaly?")

    half = export.export(workdir / "stage2", tmp_path / "bf16", dtype="bfloat16")
    assert half["bytes"]["params_orbax"] < meta["bytes"]["params_orbax"]
    assert isinstance(mavilt_jax.load(tmp_path / "bf16").report(images["gray"]), str)

    # the Hugging Face copy: transformers' logits equal our decoder's
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mavilt_jax.models import llm

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bundle" / "hf")
    assert hf.config.vocab_size == model.vocab.size
    ids = np.asarray([model.stage.report_prompt(model.encode([images["gray"]])[0])], np.int32)
    ours, _ = llm.Decoder(model.llm_config).apply({"params": model.params}, ids, np.arange(ids.shape[1])[None])
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=2e-4)


def _fails(argv: list[str], capsys) -> str:
    """Runs the CLI in this process; it must exit with status 2 and exactly one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        generate.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, (exit_info.value.code, err)
    return err[0]


def test_user_errors_exit_2_with_one_line(model, workdir, images, tmp_path, capsys):
    from test_image_io import write_dicom

    ck = f"--checkpoint={workdir}"
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((1, 64), np.uint8)).save(tmp_path / "line.png")
    frames = np.zeros((2, 16, 16), np.uint8)
    write_dicom(tmp_path / "frames.dcm", frames.reshape(32, 16))
    import pydicom

    ds = pydicom.dcmread(tmp_path / "frames.dcm")
    ds.NumberOfFrames, ds.Rows = 2, 16
    ds.save_as(tmp_path / "frames.dcm")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    config = json.loads((workdir / "stage2" / "config.json").read_text())
    (unfinished / "config.json").write_text(json.dumps(config | {"total_steps": 10**6}))
    (unfinished / "checkpoints").symlink_to(workdir / "stage2" / "checkpoints")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps(config))

    assert "does not exist" in _fails(["report", ck, str(tmp_path / "missing.png")], capsys)
    assert "not a readable PNG, JPEG or DICOM" in _fails(["report", ck, str(tmp_path / "notes.png")], capsys)
    assert "cannot be a radiograph" in _fails(["report", ck, str(tmp_path / "line.png")], capsys)
    assert "multi-frame" in _fails(["vqa", ck, str(tmp_path / "frames.dcm"), "--question=Is it normal?"], capsys)
    assert "holds no PNG" in _fails(["report", ck, str(tmp_path / "empty")], capsys)
    assert "report is empty" in _fails(["image", ck, "--report=   ", f"--out_dir={tmp_path}"], capsys)
    assert "report is empty" in _fails(["image", ck, f"--report_file={tmp_path / 'blank.txt'}", f"--out_dir={tmp_path}"], capsys)
    assert "cannot read --report_file" in _fails(["image", ck, f"--report_file={tmp_path / 'no.txt'}", f"--out_dir={tmp_path}"], capsys)
    assert "question is empty" in _fails(["vqa", ck, str(images["gray"]), "--question= "], capsys)
    assert "'cxr_encoder' workdir" in _fails(["report", f"--checkpoint={workdir / 'cxr_encoder'}", str(images["gray"])], capsys)
    assert "unfinished: step" in _fails(["report", f"--checkpoint={unfinished}", str(images["gray"])], capsys)
    assert "no checkpoint yet" in _fails(["report", f"--checkpoint={fresh}", str(images["gray"])], capsys)
    assert "does not exist" in _fails(["report", f"--checkpoint={tmp_path / 'nowhere'}", str(images["gray"])], capsys)
    assert "neither a training workdir" in _fails(["report", f"--checkpoint={tmp_path / 'empty'}", str(images["gray"])], capsys)
    assert "invalid choice" in _fails(["report", ck, "--decoding=magic", str(images["gray"])], capsys)
    with pytest.raises(image_io.ImageError):
        model.report(np.zeros((5, 5), np.uint8))
    with pytest.raises(inference.InferenceError, match="report is empty"):
        model.image("")
    shutil.rmtree(unfinished)

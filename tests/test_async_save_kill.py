"""SIGKILL while an asynchronous checkpoint save is being written, then a restart: the run resumes
from the last complete checkpoint (the unfinished step folder is ignored), the steps after the
restart are those of an uninterrupted run (same batches, same Adam state), and the step whose save
was killed is written again over its unfinished folder."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from test_train_loop import ToyStage, reference_losses, toy_config

from mavilt_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 16 MB of random float32 (incompressible) in the frozen part of the state: every save spends a
# while writing, so the test can see one in flight.
BALLAST = (4, 1024, 1024)

CONFIG = """
from test_async_save_kill import config
def get_config(arg=None):
    return config(int(arg))
"""


class BallastStage(ToyStage):
    """The toy regression with a large frozen array that every checkpoint has to write."""

    def init_state(self, rng):
        state = super().init_state(rng)
        return state.replace(frozen={"ballast": jax.random.normal(jax.random.key(1), BALLAST)})


def config(total_steps: int):
    c = toy_config(total_steps=total_steps, eval_every_steps=0, log_every_steps=1)
    c.stage = "test_async_save_kill:BallastStage"
    c.optimizer.decay_steps = 1000  # the schedule does not depend on where the run is stopped
    c.checkpoint.update(every_steps=3, keep=1000, async_save=True)
    return c


def _main(config_file, workdir, steps: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "mavilt_jax.main", f"--config={config_file}:{steps}",
                             f"--workdir={workdir}", "--alsologtostderr"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_during_an_async_save_resumes_from_the_last_complete_step(tmp_path):
    config_file = tmp_path / "kill_cfg.py"
    config_file.write_text(CONFIG)
    workdir, checkpoints = tmp_path / "w", tmp_path / "w" / "checkpoints"
    proc = _main(config_file, workdir, 100_000)
    # Kill once a save is in flight (orbax writes into "<step>.orbax-checkpoint-tmp*") and an
    # earlier one is complete. The deadline is a hang guard for a loaded machine.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        names = os.listdir(checkpoints) if checkpoints.is_dir() else []
        if any("tmp" in n for n in names) and any(n.isdigit() for n in names):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == -signal.SIGKILL, f"not killed during a save (rc {proc.returncode}):\n{out[-3000:]}"
    names = os.listdir(checkpoints)
    complete = max(int(n) for n in names if n.isdigit())
    unfinished = sorted({int(n.split(".")[0]) for n in names if "tmp" in n})
    assert unfinished and unfinished[-1] > complete, names  # the kill left a save unfinished

    # Restart (in this process: what main runs, without a second interpreter start) up to the step
    # whose save was killed: it is computed and saved again over its unfinished folder.
    killed_step = unfinished[-1]
    resumed = train.train_and_evaluate(config(killed_step), str(workdir))
    assert resumed["step"] == killed_step
    # Resumed from the last complete step, and the steps after it equal an uninterrupted run's
    # (plain optax, same batches): a restart from scratch, from the unfinished step or with a lost
    # data iterator or Adam state gives other losses.
    expected = reference_losses(config(killed_step), killed_step)
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], expected[complete:], rtol=1e-5)
    assert max(int(n) for n in os.listdir(checkpoints) if n.isdigit()) == killed_step

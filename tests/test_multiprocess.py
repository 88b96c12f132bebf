"""Two JAX processes on 127.0.0.1 (gloo CPU collectives) train the toy stage through the main CLI,
save a checkpoint (each process writes its own data-iterator state), then both restart and resume."""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=int(arg), eval_every_steps=0, log_every_steps=2)
    c.optimizer.decay_steps = 6
    c.checkpoint.every_steps = 2
    return c
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(config_file, workdir, steps: int) -> list[str]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mavilt_jax.main", f"--config={config_file}:{steps}", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         "--alsologtostderr"],  # the logged losses are read from the output (main logs to a file)
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _logged_losses(out: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"\[(\d+)\] .*?train/loss=([0-9.e+-]+)", out)}


def test_two_processes_train_save_and_resume(tmp_path):
    config_file = tmp_path / "toy_mp.py"
    config_file.write_text(CONFIG)
    workdir = tmp_path / "w"

    outs = _run_pair(config_file, workdir, 4)
    assert "Process 1 of 2" in outs[1]
    losses = [_logged_losses(o) for o in outs]
    assert sorted(losses[0]) == [2, 4]
    assert losses[0] == losses[1]  # replicated measurements: both processes see the same numbers
    step_dir = workdir / "checkpoints" / "4"
    assert sorted(f for f in os.listdir(step_dir / "data") if f.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    states = [json.loads((step_dir / "data" / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert states[0] == states[1]  # same position in each process's own shard after 4 batches

    outs = _run_pair(config_file, workdir, 6)
    assert "Resuming from step 4" in outs[0] and "Resuming from step 4" in outs[1]
    resumed = [_logged_losses(o) for o in outs]
    assert sorted(resumed[0]) == [6] and resumed[0] == resumed[1]
    # The toy regression keeps learning across the restart.
    assert resumed[0][6] < losses[0][2]
    assert json.loads((workdir / "result.json").read_text())["step"] == 6

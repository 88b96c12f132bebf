"""Faults of a two-process run (gloo CPU collectives over 127.0.0.1, as tests/test_multiprocess.py):
SIGTERM to one process stops both at one agreed step with one checkpoint that both resume from."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=int(arg), eval_every_steps=0, log_every_steps=1)
    c.checkpoint.every_steps = 100000
    return c
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(config_file, workdir, steps: int, *extra: str) -> tuple[list[subprocess.Popen], list[list[str]]]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs, outputs = [], []
    for i in range(2):
        p = subprocess.Popen(
            [sys.executable, "-m", "mavilt_jax.main", f"--config={config_file}:{steps}", f"--workdir={workdir}",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", "--alsologtostderr",
             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda p=p, lines=lines: lines.extend(p.stdout), daemon=True).start()
        procs.append(p)
        outputs.append(lines)
    return procs, outputs


def _wait_until_training(procs, outputs, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not all(any("train/loss" in line for line in list(o)) for o in outputs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "".join(outputs[0])[-3000:]
        time.sleep(0.5)


def _steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def test_sigterm_to_one_process_stops_both_at_one_checkpoint_both_resume_from(tmp_path):
    config_file = tmp_path / "toy_mp.py"
    config_file.write_text(CONFIG)
    workdir = tmp_path / "w"
    procs, outputs = _start_pair(config_file, workdir, 100000)
    _wait_until_training(procs, outputs)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one host only
    for p, o in zip(procs, outputs):
        p.wait(timeout=300)
        assert p.returncode == 0, "".join(o)[-3000:]
    (step,) = _steps(workdir)  # one checkpoint, at the step both processes agreed on
    assert sorted(f for f in os.listdir(workdir / "checkpoints" / str(step) / "data") if f.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert all(f"Stopped by preemption at step {step}" in "".join(o) for o in outputs)

    procs, outputs = _start_pair(config_file, workdir, step + 2)
    for p, o in zip(procs, outputs):
        p.wait(timeout=300)
        assert p.returncode == 0, "".join(o)[-3000:]
    assert all(f"Resuming from step {step}" in "".join(o) for o in outputs)
    assert _steps(workdir)[-1] == step + 2


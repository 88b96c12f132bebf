"""Faults of a two-process run (gloo CPU collectives over 127.0.0.1, as tests/test_multiprocess.py):
SIGTERM to one process stops both at one agreed step with one checkpoint that both resume from; a
process killed (SIGKILL) makes the other exit at once with one line naming it; a process that hangs
(SIGSTOP) makes the other exit after the heartbeat timeout instead of waiting in a collective."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from multiprocess_helpers import start_pair

CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=int(arg), eval_every_steps=0, log_every_steps=1)
    c.checkpoint.every_steps = 100000
    return c
"""


def _start_pair(config_file, workdir, steps: int, *extra: str) -> tuple[list[subprocess.Popen], list[list[str]]]:
    """The pair, and each process's output lines so far (a reader thread per process)."""
    procs, outputs = start_pair(config_file, workdir, steps, *extra), []
    for p in procs:
        lines: list[str] = []
        threading.Thread(target=lambda p=p, lines=lines: lines.extend(p.stdout), daemon=True).start()
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



def _survivor_output(procs, outputs, victim: int, timeout: float = 120) -> tuple[int, str]:
    """SIGKILL (or SIGSTOP) has hit ``victim``: the other process's exit status and output. The
    timeout is a hang guard, far below the heartbeat timeout the tests set where it matters."""
    survivor = procs[1 - victim]
    try:
        survivor.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    time.sleep(0.5)  # the reader thread takes the last lines
    return survivor.returncode, "".join(outputs[1 - victim])


@pytest.mark.parametrize("victim", [1, 0], ids=["process_1_dies", "coordinator_dies"])
def test_a_killed_process_makes_the_other_exit_naming_it(tmp_path, victim):
    config_file = tmp_path / "toy_mp.py"
    config_file.write_text(CONFIG)
    workdir = tmp_path / "w"
    # A heartbeat timeout far above the hang guard: the survivor must not wait for it.
    procs, outputs = _start_pair(config_file, workdir, 100000, "--heartbeat_timeout_seconds=600")
    _wait_until_training(procs, outputs)
    procs[victim].kill()
    status, out = _survivor_output(procs, outputs, victim)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    if errors:  # the survivor saw its collective fail: the project's one line
        assert status == 1, out[-3000:]
        assert errors[-1].startswith(f"error: process {victim} (of 2) died or lost its connection"), errors
        assert f"process {1 - victim} stops too. Restart all 2 processes: no checkpoint yet" in errors[-1]
        assert "Traceback" not in out
    else:  # only when the coordinator (process 0) dies: JAX's client may end the survivor first
        assert victim == 0 and status != 0, out[-3000:]
        assert "another task died" in out, out[-3000:]


def test_a_hung_process_makes_the_other_exit_after_the_heartbeat_timeout(tmp_path):
    config_file = tmp_path / "toy_mp.py"
    config_file.write_text(CONFIG)
    workdir = tmp_path / "w"
    procs, outputs = _start_pair(config_file, workdir, 100000, "--heartbeat_timeout_seconds=5")
    _wait_until_training(procs, outputs)
    procs[1].send_signal(signal.SIGSTOP)  # alive but silent: no collective fails, no heartbeat either
    status, out = _survivor_output(procs, outputs, 1)
    assert status != 0, out[-3000:]
    # JAX's coordination service names the silent process; the survivor's client then ends it.
    assert re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*1\b", out), out[-3000:]

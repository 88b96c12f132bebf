"""Two `mavilt_jax.main` processes on 127.0.0.1 (gloo CPU collectives), for the multi-process
tests (tests/test_multiprocess.py, tests/test_multiprocess_faults.py)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(config_file, workdir, steps: int, *extra: str) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a two-process run of ``--config=config_file:steps``; each one's stdout
    (with stderr) is a text pipe. ``--alsologtostderr``: the tests read the logged losses from that
    output (main logs to a file)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return [subprocess.Popen(
        [sys.executable, "-m", "mavilt_jax.main", f"--config={config_file}:{steps}", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", "--alsologtostderr",
         *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]

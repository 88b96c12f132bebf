"""Shared test fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real CXR material lives beside the project root (never inside it); tests skip without it.
SHARED_DATA = pathlib.Path(os.environ.get("MAVILT_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CXR material not found at {SHARED_DATA} (set MAVILT_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture
def compile_fast():
    """Compiles with most XLA optimisations off for one test (fast compiles, same values up to
    float rounding), restoring the setting afterwards."""
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def tiny_main_job(tmp_path_factory) -> dict:
    """The README's main job run once through its CLI at the smallest size
    (``configs/demo.py:smoke``: every pipeline step, evaluation included), shared by the pytest-xdist
    workers through a file lock. Returns ``{"workdir": Path, "stdout": str, "stderr": str, "argv": list}``."""
    import json
    import subprocess
    import sys

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's basetemp is popen-gwN inside this run's folder
        root = root.parent  # shared by the workers of this run, not by other runs
    workdir, record = root / "tiny_main_job", root / "tiny_main_job.json"
    argv = ["-m", "mavilt_jax.main", "--config=configs/demo.py:smoke", f"--workdir={workdir}"]
    with FileLock(str(root / "tiny_main_job.lock")):
        if not record.exists():
            proc = subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=1500)
            record.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
    run = json.loads(record.read_text())
    if run["returncode"] != 0:
        pytest.fail(f"the tiny main job failed (exit {run['returncode']}):\n{run['stderr'][-3000:]}")
    # argv: the command as run (after "python"), so that the README test can compare it with the README's.
    return {"workdir": workdir, "stdout": run["stdout"], "stderr": run["stderr"], "argv": argv}

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


TINY_MAIN_JOB_ARGV = ("-m", "mavilt_jax.main", "--config=configs/demo.py:smoke")
# Runs the job, then writes its exit status and output as JSON (renamed into place: a reader
# never sees half a record). Argument 1: the record's path; the rest: the command.
_RECORD_JOB = """
import json, os, subprocess, sys
try:
    proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=1500)
    run = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
except Exception as e:  # a timeout, or no interpreter: the waiting tests fail with this
    run = {"returncode": -1, "stdout": "", "stderr": repr(e)}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(run, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def _tiny_main_job_root(config: pytest.Config) -> pathlib.Path:
    root = config._tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's basetemp is popen-gwN inside this run's folder
        root = root.parent  # shared by the workers of this run, not by other runs
    return root


def _start_tiny_main_job(root: pathlib.Path) -> None:
    """Starts the tiny main job in the background, once per run (the pytest-xdist workers share it)."""
    import subprocess
    import sys

    from filelock import FileLock

    with FileLock(str(root / "tiny_main_job.lock")):
        started = root / "tiny_main_job.started"
        if started.exists():
            return
        argv = [sys.executable, *TINY_MAIN_JOB_ARGV, f"--workdir={root / 'tiny_main_job'}"]
        subprocess.Popen([sys.executable, "-c", _RECORD_JOB, str(root / "tiny_main_job.json"), *argv],
                         cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
        started.touch()


def _reads_tiny_main_job(item: pytest.Item) -> bool:
    return "tiny_main_job" in getattr(item, "fixturenames", ()) or item.get_closest_marker("tiny_main_job") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The job takes minutes on one core. Started at collection and with the tests that read it
    # moved last, it runs beside the other tests instead of holding the workers at the first
    # test that needs it. (pytest-xdist workers collect alike, so they agree on the new order.)
    readers = [item for item in items if _reads_tiny_main_job(item)]
    if readers and not config.option.collectonly:
        _start_tiny_main_job(_tiny_main_job_root(config))
    if readers:
        items[:] = [item for item in items if not _reads_tiny_main_job(item)] + readers


@pytest.fixture(scope="session")
def tiny_main_job(request: pytest.FixtureRequest) -> dict:
    """The README's main job run once through its CLI at the smallest size
    (``configs/demo.py:smoke``: every pipeline step, evaluation included), started in the
    background at collection and shared by the pytest-xdist workers.
    Returns ``{"workdir": Path, "stdout": str, "stderr": str, "argv": list}``."""
    import json
    import time

    root = _tiny_main_job_root(request.config)
    _start_tiny_main_job(root)  # a test that asks for the job by name at run time was not seen at collection
    record = root / "tiny_main_job.json"
    deadline = time.monotonic() + 1800
    while not record.exists():
        if time.monotonic() > deadline:
            pytest.fail("the tiny main job did not finish in 30 minutes")
        time.sleep(1.0)
    run = json.loads(record.read_text())
    if run["returncode"] != 0:
        pytest.fail(f"the tiny main job failed (exit {run['returncode']}):\n{run['stderr'][-3000:]}")
    workdir = root / "tiny_main_job"
    # argv: the command as run (after "python"), so that the README test can compare it with the README's.
    return {"workdir": workdir, "stdout": run["stdout"], "stderr": run["stderr"],
            "argv": [*TINY_MAIN_JOB_ARGV, f"--workdir={workdir}"]}

"""mavilt_jax.allocator: which C allocator a process runs with, and the main job's restart with tcmalloc."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from mavilt_jax import allocator

ROOT = pathlib.Path(__file__).resolve().parents[1]
TCMALLOC = pathlib.Path(allocator.TCMALLOC_PATHS[0])
# CI installs it (.ci/run), so there these tests run; elsewhere `ls` the path to see why one skipped.
needs_tcmalloc = pytest.mark.skipif(not TCMALLOC.exists(),
                                    reason=f"{TCMALLOC} does not exist (Debian package libtcmalloc-minimal4)")

# Prints the process id, what restart_with_tcmalloc returned (after any restart) and the
# allocator the kernel's memory map of this process shows, read here without the module.
_CHILD = """
import os, sys
from mavilt_jax import allocator
said = allocator.restart_with_tcmalloc()
maps = open(f"/proc/{os.getpid()}/maps").read()
print(os.getpid(), said, "libtcmalloc" in maps, os.environ.get("TCMALLOC_RELEASE_RATE"), os.environ.get("LD_PRELOAD"))
"""


def _child(env_changes: dict[str, str], code: str = _CHILD) -> tuple[int, list[str]]:
    drop = ("LD_PRELOAD", "TCMALLOC_RELEASE_RATE", "MAVILT_ALLOCATOR_RESTARTED")
    env = {k: v for k, v in os.environ.items() if k not in drop} | env_changes
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return proc.pid, out.splitlines()


_IN_USE = "from mavilt_jax import allocator; print(allocator.in_use())"


def test_in_use_names_glibc_without_a_preload():
    assert _child({}, _IN_USE)[1] == ["glibc malloc"]


@needs_tcmalloc
def test_in_use_names_a_preloaded_tcmalloc():
    assert _child({"LD_PRELOAD": str(TCMALLOC)}, _IN_USE)[1] == ["tcmalloc"]


def test_in_use_without_a_memory_map_is_unknown(tmp_path):
    assert allocator.in_use(str(tmp_path / "no-maps")) == "unknown"


def test_preload_environment_puts_tcmalloc_first_and_keeps_the_users_settings():
    env = allocator.preload_environment({"LD_PRELOAD": "/opt/libx.so", "PATH": "/bin"}, "/lib/libtcmalloc.so")
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc.so /opt/libx.so" and env["PATH"] == "/bin"
    assert env["TCMALLOC_RELEASE_RATE"] == "0"
    assert allocator.preload_environment({"TCMALLOC_RELEASE_RATE": "5"}, "/l.so")["TCMALLOC_RELEASE_RATE"] == "5"


@needs_tcmalloc
def test_restart_runs_the_same_process_once_with_tcmalloc():
    pid, lines = _child({})
    assert lines == [f"{pid} tcmalloc True 0 {TCMALLOC}"]  # one run after the restart, same process id


@needs_tcmalloc
def test_restart_keeps_the_users_release_rate():
    pid, lines = _child({"TCMALLOC_RELEASE_RATE": "3"})
    assert lines == [f"{pid} tcmalloc True 3 {TCMALLOC}"]


def test_no_restart_when_a_caching_allocator_already_runs_or_none_is_found(monkeypatch):
    monkeypatch.setattr(allocator, "in_use", lambda: "jemalloc")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("restarted"))
    assert allocator.restart_with_tcmalloc() == "jemalloc"
    monkeypatch.setattr(allocator, "in_use", lambda: "glibc malloc")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.restart_with_tcmalloc() == "glibc malloc"


def test_find_tcmalloc_takes_the_first_path_that_exists(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.touch()
    assert allocator.find_tcmalloc([str(tmp_path / "absent.so"), str(lib)]) == str(lib)
    assert allocator.find_tcmalloc([str(tmp_path / "absent.so")]) is None

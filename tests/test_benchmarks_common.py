"""benchmarks.common: the timing harness's call order and the allocator it reports."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import common


def test_median_seconds_warms_up_then_rotates_the_order_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    secs = common.median_seconds(fns, repeats=4, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(secs) == {"a", "b", "c"} and all(s >= 0 for s in secs.values())


TCMALLOC = pathlib.Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def _allocator_of_a_child(preload: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    code = "from benchmarks import common; print(common.malloc_library())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1]).stdout.strip()


def test_malloc_library_names_the_preloaded_allocator():
    assert _allocator_of_a_child(None) == "glibc malloc"
    if not TCMALLOC.exists():
        pytest.skip(f"{TCMALLOC} not installed (Debian: libtcmalloc-minimal4)")
    assert _allocator_of_a_child(str(TCMALLOC)) == "tcmalloc"

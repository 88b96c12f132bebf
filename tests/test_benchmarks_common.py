"""benchmarks.common: the timing harness's call order (the allocator it reports: tests/test_allocator.py)."""

from __future__ import annotations

from benchmarks import common


def test_median_seconds_warms_up_then_rotates_the_order_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    secs = common.median_seconds(fns, repeats=4, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(secs) == {"a", "b", "c"} and all(s >= 0 for s in secs.values())

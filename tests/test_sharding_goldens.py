"""Sharding goldens: the partition spec of every parameter, optimizer-state and frozen leaf of each
named accelerator configuration (`configs/accelerators.py`) on its slice's mesh, pinned in
``tests/goldens/sharding/<name>.json``.

Computed from shapes only (the stage's ``init_state`` under ``jax.eval_shape``, the config's
logical axis rules, an abstract mesh of the slice's shape): no TPU, no libtpu. A change to a rule,
a mesh, a model size or a parameter's logical axes fails here with the leaves that changed.
After an intended change, rewrite the goldens and review their diff:

  python -m mavilt_jax.aot --write_goldens=tests/goldens/sharding
"""

from __future__ import annotations

import json
import pathlib

import pytest

from configs import accelerators
from mavilt_jax import aot, tpu_topologies

GOLDENS = pathlib.Path(__file__).parent / "goldens" / "sharding"


def diff(want: dict, got: dict) -> list[str]:
    """Readable differences between two sharding tables (mesh, then leaf by leaf)."""
    lines = []
    if want["mesh"] != got["mesh"]:
        lines.append(f"mesh: golden {want['mesh']} != now {got['mesh']}")
    for key in sorted(set(want["leaves"]) | set(got["leaves"])):
        a, b = want["leaves"].get(key), got["leaves"].get(key)
        if a != b:
            lines.append(f"{key}:\n    golden: {a}\n    now:    {b}")
    return lines


@pytest.mark.parametrize("name", sorted(accelerators.NAMED))
def test_sharding_matches_golden(name):
    spec = accelerators.NAMED[name]
    num_devices = tpu_topologies.parse(spec["topology"]).num_chips * spec["num_slices"]
    got = aot.sharding_table(accelerators.config(name=name), num_devices)
    path = GOLDENS / f"{name}.json"
    assert path.is_file(), f"no golden {path}; write it with python -m mavilt_jax.aot --write_goldens={GOLDENS}"
    want = json.loads(path.read_text())
    changes = diff(want, got)
    assert not changes, f"sharding of {name!r} changed in {len(changes)} place(s):\n" + "\n".join(changes[:40])


def test_diff_names_the_changed_leaf():
    want = {"mesh": {"fsdp": 8}, "leaves": {"params['a']": "(4,) float32 P('fsdp')", "params['b']": "x"}}
    got = {"mesh": {"fsdp": 8}, "leaves": {"params['a']": "(4,) float32 P(None)", "params['c']": "y"}}
    assert diff(want, got) == [
        "params['a']:\n    golden: (4,) float32 P('fsdp')\n    now:    (4,) float32 P(None)",
        "params['b']:\n    golden: x\n    now:    None",
        "params['c']:\n    golden: None\n    now:    y",
    ]

"""Cloud TPU slices by name (``v5e-8``, ``v5p-64``), their chips, and compile-only TPU devices.

A slice name counts what Cloud TPU counts: chips for v5e / v6e, TensorCores for v4 / v5p (two per
chip, fused into one "megacore" device), so ``v5p-64`` is 32 chips in a 2x4x4 torus. A raw
libtpu topology (``v5e:2x4``, ``v5p:2x4x4``) is accepted too.

`devices` needs the ``libtpu`` wheel (``pip install -e .[tpu]``): libtpu describes the devices of
a topology that is not attached, so XLA compiles for it on any host
(``jax.experimental.topologies``). Everything else here is a table and works without it.

Per-chip figures (public Cloud TPU specifications): HBM, dense bf16 peak FLOP/s, HBM bandwidth.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    megacore: bool  # two TensorCores per chip, counted twice in slice names


CHIPS: dict[str, Chip] = {
    "v4": Chip(32 * GIB, 275e12, 1.2e12, True),
    "v5e": Chip(16 * GIB, 197e12, 0.819e12, False),
    "v5p": Chip(95 * GIB, 459e12, 2.765e12, True),
    "v6e": Chip(32 * GIB, 918e12, 1.64e12, False),
}

# chips in a slice -> torus shape (v5e / v6e: 2-D; v4 / v5p: 3-D).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice: ``generation`` (a key of `CHIPS`), ``shape`` (the torus, "2x4x4")."""

    name: str
    generation: str
    shape: str

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def num_chips(self) -> int:
        return math.prod(int(d) for d in self.shape.split("x"))

    @property
    def topology_name(self) -> str:
        return f"{self.generation}:{self.shape}"


def parse(name: str) -> Slice:
    """``v5p-64`` or ``v5p:2x4x4`` -> `Slice`; a ValueError names the known slices otherwise."""
    if m := re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name):
        generation, count = m.group(1), int(m.group(2))
        chips = count // 2 if CHIPS[generation].megacore else count
        shapes = _SHAPES_3D if CHIPS[generation].megacore else _SHAPES_2D
        if chips in shapes and (not CHIPS[generation].megacore or count % 2 == 0):
            return Slice(name, generation, shapes[chips])
    elif m := re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name):
        return Slice(name, m.group(1), m.group(2))
    raise ValueError(f"unknown TPU slice {name!r}; known: {', '.join(known_names())} (or a topology like v5p:2x4x4)")


def known_names() -> list[str]:
    names = []
    for generation, chip in CHIPS.items():
        shapes = _SHAPES_3D if chip.megacore else _SHAPES_2D
        names += [f"{generation}-{n * 2 if chip.megacore else n}" for n in shapes]
    return names


def have_libtpu() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def devices(tpu: Slice, num_slices: int = 1) -> Sequence:
    """Compile-only devices of ``num_slices`` copies of ``tpu`` (needs libtpu; no TPU attached)."""
    # libtpu warns about a missing worker list when the host is not a TPU VM, and takes a lock
    # file that any other JAX process with libtpu installed may hold (CI runs tests in parallel).
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kwargs = dict(chip_config_name="megacore" if tpu.chip.megacore else "default", num_slices=num_slices)
    return topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology_name, **kwargs).devices

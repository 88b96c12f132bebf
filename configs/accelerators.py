"""Named accelerator configurations: the stage-1 config (stage 2 derives from it) at the sizes
users run, with the mesh, rules, micro-batch, remat and dtype that fit a stated TPU slice.

  python -m mavilt_jax.aot --config=configs/accelerators.py:name=1b     # compile + fit check
  python -m mavilt_jax.aot --all                                        # every name below
  python -m mavilt_jax.main --config=configs/accelerators.py:name=1b,stage=stage2 --workdir=...

Every name keeps 256 image codes per radiograph (the full VQ-GAN of `configs/vqgan.py`:
256 px, 4 downsamplings, 16 x 16 codes) and sequences of 512 tokens (a report of up to ~250
tokens, the 256 codes and the markers). ``aot.topology`` / ``aot.num_slices`` name the slice the
configuration was checked on by `mavilt_jax.aot`; the loop itself ignores them. The partition
spec of every parameter and optimizer-state leaf is pinned in ``tests/goldens/sharding/``.

Real runs also set ``text=`` / ``model.pretrained`` and ``tokenizer=`` as in `configs/stage1.py`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import stage1 as stage1_config
from configs import stage2 as stage2_config
from configs import vqgan as vqgan_config

# name -> the choices that make it fit on its slice (see the module docstring).
NAMED: dict[str, dict[str, Any]] = {
    # SmolLM2-135M: small enough to replicate; pure data parallelism over the 8 chips.
    "smollm2": dict(model="smollm2", topology="v5e-8", num_slices=1, mesh=(-1, 1, 1), batch_size=32,
                    remat="none", dtype="bfloat16", scan_layers=True),
    # Llama-3.2-1B class: parameters, Adam moments and the Eq. 11 anchor sharded over all chips
    # (FSDP, ZeRO-3); full remat keeps one layer's activations at a time.
    "1b": dict(model="1b", topology="v5e-8", num_slices=1, mesh=(1, -1, 1), batch_size=32,
               remat="full", dtype="bfloat16", scan_layers=True),
    # Llama-2-7B class: FSDP over one v5p-64 slice (32 chips).
    "7b": dict(model="7b", topology="v5p-64", num_slices=1, mesh=(1, -1, 1), batch_size=64,
               remat="full", dtype="bfloat16", scan_layers=True),
    # The same over two v5p-64 slices: data parallel across slices (DCN), FSDP within one (ICI).
    "7b_2slices": dict(model="7b", topology="v5p-64", num_slices=2, mesh=(2, -1, 1), batch_size=128,
                       remat="full", dtype="bfloat16", scan_layers=True),
}
SEQUENCE_LENGTH = 512


def config(*, name: str = "1b", stage: str = "stage1") -> ml_collections.ConfigDict:
    """The named configuration of ``stage`` ("stage1" or "stage2")."""
    if name not in NAMED:
        raise ValueError(f"unknown accelerator configuration {name!r}; known: {sorted(NAMED)}")
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be stage1 or stage2, got {stage!r}")
    spec = NAMED[name]
    module = stage1_config if stage == "stage1" else stage2_config
    c = module.get_config(f"model={spec['model']}")
    c.vqgan = ml_collections.ConfigDict(dict(model=vqgan_config.get_config("res=256").model))
    c.sequence.max_len = SEQUENCE_LENGTH
    c.batch_size = spec["batch_size"]
    c.mesh.shape = tuple(spec["mesh"])
    c.model.update(remat=spec["remat"], dtype=spec["dtype"], scan_layers=spec["scan_layers"])
    c.aot = ml_collections.ConfigDict(dict(name=name, topology=spec["topology"], num_slices=spec["num_slices"]))
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    fields = dict(item.split("=", 1) for item in filter(None, (arg or "").split(",")) if "=" in item)
    unknown = set(fields) - {"name", "stage"} or {i for i in (arg or "").split(",") if i and "=" not in i}
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: name=, stage=")
    return config(**fields)

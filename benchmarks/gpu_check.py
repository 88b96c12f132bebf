"""Real stage-1 train steps of named accelerator configurations on one GPU: step time and MFU.

  PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --names=smollm2,1b --steps=5 --batch_size=8

For the `device` tool (an H200 lent for a few minutes): `launch/gpu_check.sh` is the prepared
command. XLA cannot compile for a GPU without one (jaxlib's compile-only topologies are TPU-only),
so this runs the steps for real instead of `mavilt_jax.aot`.

Per name: the configuration of `configs/accelerators.py` on a (1, 1, 1) mesh with a smaller batch
(one device), the state initialised on the device (random weights: the speed is the same), random
token ids and images of the stage's batch shapes, ``--steps`` timed steps after one warm-up
(compile) step. MFU = model FLOPs per step / step time / peak (989 TFLOP/s dense bf16 for an
H100/H200 SXM), with model FLOPs = 6 x parameters x tokens + 12 x layers x T^2 x heads x head_dim
x sequences (the usual transformer count, causal attention not halved); XLA's own count of the
compiled step is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def model_flops(llm, rows: int, length: int) -> float:
    d, f, n_layers = llm.hidden_size, llm.intermediate_size, llm.num_layers
    per_layer = d * llm.num_heads * llm.head_dim * 2 + d * llm.num_kv_heads * llm.head_dim * 2 + 3 * d * f
    params = n_layers * per_layer + llm.vocab_size * d * (1 if llm.tie_embeddings else 2)
    attention = 12 * n_layers * length * length * llm.num_heads * llm.head_dim * rows
    return 6.0 * params * rows * length + attention


def run_one(name: str, steps: int, batch_size: int) -> dict:
    import flax.linen as nn
    import jax
    import numpy as np

    from configs import accelerators
    from mavilt_jax import aot, sharding, train

    config = accelerators.config(name=name)
    config.mesh.shape = (1, 1, 1)
    config.batch_size = batch_size
    stage = aot.abstract_stage(config)
    mesh = sharding.make_mesh((1, 1, 1), config.mesh.axes, jax.devices()[:1])
    rules = aot.axis_rules(config)
    state_shardings, abstract_state = train.abstract_train_state(stage, mesh, rules, jax.random.key(0))
    state = jax.jit(lambda r: nn.unbox(stage.init_state(r)), out_shardings=state_shardings)(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {}
    for k, s in aot.abstract_batch(stage, batch_size).items():
        if np.issubdtype(s.dtype, np.integer) and k in ("tokens", "targets"):
            value = rng.integers(0, stage.layout.special_offset, s.shape)
        elif k == "image":
            value = rng.uniform(-1, 1, s.shape)
        else:
            value = np.ones(s.shape)
        batch[k] = jax.device_put(value.astype(s.dtype), sharding.batch_sharding(mesh))
    step = train.make_update_step(stage, state_shardings, mesh)
    key = jax.random.key(1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t0 = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        xla_flops = float((step.lower(state, batch, key).compile().cost_analysis() or {}).get("flops", 0.0))
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = step(state, batch, key)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    rows, length = math.prod(batch["tokens"].shape[:-1]), batch["tokens"].shape[-1]
    step_s = float(np.median(times))
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), float("nan"))
    flops = model_flops(stage.llm_config, rows, length)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(name=name, device=kind, batch_size=batch_size, tokens_per_step=rows * length,
                first_step_s=round(compile_s, 1), step_s=round(step_s, 4),
                tokens_per_s=round(rows * length / step_s), model_tflop_per_step=round(flops / 1e12, 2),
                xla_tflop_per_step=round(xla_flops / 1e12, 2), mfu=round(flops / step_s / peak, 3),
                peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
                loss=float(m["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", default="smollm2,1b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = []
    for name in args.names.split(","):
        results.append(run_one(name, args.steps, args.batch_size))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

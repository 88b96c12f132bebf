"""The machine's limits as XLA reaches them: best matmul FLOP/s (f32, bf16) and streaming read bandwidth.

Matmul: ``[n, n] @ [n, n]`` for a few n, 2 n^3 FLOPs per product, the best n reported (the peak a
well-shaped dense layer can hope for). Read bandwidth: bytes / seconds of one pass over a 256 MiB
f32 array, the best of a jitted sum, a jitted matrix-vector product and numpy's sum: the rate at
which decoding can stream weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import Row, median_seconds

SIZES = (512, 1024, 2048)


def matmul_peak(dtype: str, repeats: int) -> tuple[float, int]:
    """(best FLOP/s, its n) of ``a @ b`` in ``dtype`` (accumulating as XLA does by default)."""
    best = (0.0, 0)
    for n in SIZES:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
        f = jax.jit(lambda a, b: a @ b)
        sec = median_seconds({"mm": lambda: f(a, b)}, repeats)["mm"]
        best = max(best, (2.0 * n**3 / sec, n))
    return best


def read_bandwidth(repeats: int, mib: int = 256) -> tuple[float, str]:
    """(best bytes/s, how) of reading ``mib`` MiB once."""
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    v = jnp.ones((4096,), jnp.float32)
    host = np.asarray(x)
    sum_, gemv = jax.jit(jnp.sum), jax.jit(lambda x, v: x.reshape(-1, 4096) @ v)
    secs = median_seconds({"XLA sum": lambda: sum_(x), "XLA gemv": lambda: gemv(x, v),
                           "numpy sum": lambda: host.sum()}, repeats)
    how = min(secs, key=secs.get)
    return x.nbytes / secs[how], how


def run(repeats: int = 5) -> tuple[list[Row], dict[str, float]]:
    rows, limits = [], {}
    for dtype in ("float32", "bfloat16"):
        flops, n = matmul_peak(dtype, repeats)
        limits[f"matmul_{dtype}"] = flops
        rows.append(Row("limits", f"matmul {dtype} (best n={n})", flops / 1e9, "GFLOP/s"))
    bw, how = read_bandwidth(repeats)
    limits["read_bandwidth"] = bw
    rows.append(Row("limits", f"streaming read (256 MiB, best: {how})", bw / 1e9, "GB/s"))
    return rows, limits

"""Timing helpers shared by the benchmark sections: warm-up, medians, compile counting, FLOP formulas.

Every figure is the median of ``repeats`` timed calls made after one untimed warm-up call (which
compiles). `CompileCounter` counts XLA backend compilations; a section records how many happened
inside its timed regions (the table shows them, and they should be 0).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
from jax import monitoring

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA compilations (all of them, and those inside `timed` regions)."""

    def __init__(self):
        self.total = 0
        self.timed = 0
        self._in_timed = False
        monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == _COMPILE_EVENT:
            self.total += 1
            self.timed += self._in_timed

    def timed_region(self):
        counter = self

        class _Region:
            def __enter__(self):
                counter._in_timed = True

            def __exit__(self, *exc):
                counter._in_timed = False

        return _Region()


COUNTER: CompileCounter | None = None


def counter() -> CompileCounter:
    global COUNTER
    if COUNTER is None:
        COUNTER = CompileCounter()
    return COUNTER


def torch_device() -> str:
    """Where the torch reference runs: the GPU when JAX runs on one too (a GPU step against a CPU
    one would be no comparison), else the CPU."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def block(x: Any) -> Any:
    """Waits for JAX arrays, and for queued CUDA work of the torch reference (its CPU calls are
    synchronous)."""
    x = jax.block_until_ready(x)
    torch = sys.modules.get("torch")  # imported only by the sections with a torch reference
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return x


def median_seconds(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each zero-argument call, after ``warmup`` untimed calls each.

    The calls are interleaved so that load drifting on a shared machine affects every contender
    alike; their ratio is the figure to trust. Each round starts one contender later (a, b | b, a |
    a, b ...): a call right after another library's can run slower (seen: 1.24x for a jitted
    train step right after a torch one), and rotating spreads that over all contenders.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with counter().timed_region():
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                block(fns[name]())
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclasses.dataclass
class Row:
    """One line of the table: a section, a case, a figure with its unit, and optional comparisons."""

    section: str
    case: str
    value: float
    unit: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def llama_train_flops(*, n_params_matmul: int, layers: int, seq: int, d_attn: int, tokens: int) -> float:
    """FLOPs of one forward+backward step (PaLM appendix B): 6 N per token for the matmul
    parameters N (embedding gather excluded, LM head included) plus 12 L T d_attn per token for
    the attention scores and values (d_attn = heads x head_dim), causal masking not discounted."""
    return tokens * (6.0 * n_params_matmul + 12.0 * layers * seq * d_attn)

"""What a long run shows on the terminal: which step of the pipeline, step / total, rate, ETA.

Library logs (orbax, TFDS, JAX) go to the log file (`mavilt_jax.main` sets that up); the terminal
gets only the lines written here, from process 0, each also logged. A context prefix (e.g.
``[3/7 stage1]``) names the pipeline step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping

from absl import logging

_prefix: list[str] = []


def _is_main_process() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - before JAX starts there is one process
        return True


def show(message: str) -> None:
    """One progress line on stdout (process 0) and in the log."""
    line = " ".join([*_prefix, message])
    logging.info(line)
    if _is_main_process():
        print(line, file=sys.stdout, flush=True)


@contextlib.contextmanager
def context(label: str) -> Iterator[None]:
    """Prefixes the lines shown inside the block with ``label``."""
    _prefix.append(label)
    try:
        yield
    finally:
        _prefix.pop()


def format_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class StepProgress:
    """Shows ``step s/total, rate, ETA`` and the given measurements every ``every_seconds`` (and at
    the first and last step). The rate is measured from the first shown step on, so compilation
    does not distort the ETA."""

    def __init__(self, total_steps: int, start_step: int = 0, every_seconds: float = 15.0):
        self.total, self.every = total_steps, every_seconds
        self._t0: float | None = None
        self._s0 = start_step
        self._last = 0.0

    def __call__(self, step: int, measurements: Mapping[str, float] | None = None) -> None:
        now = time.time()
        if self._t0 is None:  # the first step includes compilation: start the clock after it
            self._t0, self._s0 = now, step
        if step not in (self._s0, self.total) and now - self._last < self.every:
            return
        self._last = now
        done = step - self._s0
        rate = done / (now - self._t0) if done and now > self._t0 else 0.0
        eta = format_duration((self.total - step) / rate) if rate else "?"
        shown = ""
        if measurements:
            keys = [k for k in ("loss", "text_ce", "image_ce", "accuracy") if k in measurements]
            shown = " ".join(f"{k} {float(measurements[k]):.3f}" for k in keys)
        show(f"step {step}/{self.total} {shown} | {rate:.1f} steps/s | ETA {eta}".replace("  ", " "))

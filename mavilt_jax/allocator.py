"""The C allocator of a long CPU run: the main job restarts itself with tcmalloc preloaded when
the system has it.

Why: XLA:CPU allocates a step's temporaries afresh on every call, and glibc's malloc maps each
buffer over 32 MiB anew, so its pages fault again on every step (about 400,000 faults per d512
train step of ``benchmarks.run``). tcmalloc keeps them mapped; the demo's stage-1 step ran 1.3x
(one 2-core VM) to 1.9x (another) faster with it, while phi's small convolutional step did not
change (README). ``LD_PRELOAD`` only acts when a process starts,
hence the restart (``os.execve``: same process id, same arguments, same terminal).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

# Where Debian / Ubuntu (libtcmalloc-minimal4), Fedora / RHEL (gperftools-libs) put it.
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
CACHING_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# Set in the restarted process: it never restarts again, whatever it finds.
_RESTARTED = "MAVILT_ALLOCATOR_RESTARTED"


def in_use(maps_path: str = "/proc/self/maps") -> str:
    """The C allocator of this process: a caching one preloaded (tcmalloc, jemalloc, mimalloc),
    ``glibc malloc``, or ``unknown`` where the process's memory map cannot be read (not Linux)."""
    try:
        with open(maps_path) as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in CACHING_ALLOCATORS:
        if f"lib{name}" in maps:
            return name
    return "glibc malloc"


def find_tcmalloc(paths: Sequence[str] = TCMALLOC_PATHS) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


def preload_environment(environ: Mapping[str, str], library: str) -> dict[str, str]:
    """``environ`` with ``library`` first in ``LD_PRELOAD`` (what was there stays after it) and
    ``TCMALLOC_RELEASE_RATE=0`` unless the user set a rate: the point is that freed buffers stay
    mapped for the next step."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    env.setdefault("TCMALLOC_RELEASE_RATE", "0")
    env[_RESTARTED] = "1"
    return env


def restart_with_tcmalloc() -> str:
    """Restarts this process (``os.execve``, which does not return) with tcmalloc preloaded when
    the system has it and no caching allocator runs yet; otherwise returns the allocator this
    process runs with, for the run's terminal line. The command run again is ``sys.orig_argv``
    (interpreter options and ``-m module`` included)."""
    current = in_use()
    library = find_tcmalloc()
    if current != "glibc malloc" or library is None or os.environ.get(_RESTARTED):
        return current
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], preload_environment(os.environ, library))
    raise AssertionError("unreachable: os.execve returns only by raising")

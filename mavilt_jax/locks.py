"""File locks that keep two processes from writing the same outputs.

``filelock`` takes an OS lock (``flock``) on a small file; the OS releases it when the process
ends, however it ends (SIGKILL included), so a crashed run never leaves a stale lock behind.

  * a training workdir: one run at a time; a second run is refused at once
    (`holding_workdir_lock`, raises `WorkdirBusyError`). Every process of a multi-process run
    holds its own lock (``.train-process_{i}-of-{n}.lock``), so the processes of one run share
    the workdir and a second run with the same process count is refused by each of its processes;
  * a dataset build: the second process waits for the first to finish, then reads what it built
    (`build_lock`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import filelock

F = TypeVar("F", bound=Callable[..., Any])


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir's lock."""


def workdir_lock_path(workdir: str | os.PathLike) -> str:
    """This process's lock file in ``workdir``."""
    import jax  # here: the lock name needs the process index, known after distributed init

    return os.path.join(os.fspath(workdir), f".train-process_{jax.process_index()}-of-{jax.process_count()}.lock")


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds this process's lock on ``workdir``; raises `WorkdirBusyError` if another run has it."""
    os.makedirs(workdir, exist_ok=True)
    path = workdir_lock_path(workdir)
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise WorkdirBusyError(f"workdir {os.fspath(workdir)} is in use by another run (lock {path} is held); "
                               "wait for it to finish or choose another --workdir") from None
    try:
        yield
    finally:
        lock.release()


def holding_workdir_lock(fn: F) -> F:
    """Decorates ``fn(config, workdir, ...)`` to run while holding the workdir's lock."""

    @functools.wraps(fn)
    def wrapper(config, workdir, *args, **kwargs):
        with workdir_lock(workdir):
            return fn(config, workdir, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def build_lock(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Holds ``{target}.lock`` (the folder a build writes is ``target``); waits while another
    process holds it, saying so once in the log."""
    path = f"{os.fspath(target).rstrip(os.sep)}.lock"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logging.warning("Waiting for another process to finish building %s (lock %s).", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()

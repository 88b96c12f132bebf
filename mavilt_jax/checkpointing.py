"""Checkpoints of the train state and the input pipeline position (orbax + grain).

One checkpoint step holds two items:
  ``state``: the `TrainState` (params, optimizer state, extra, frozen), saved asynchronously;
  ``data``:  every process's grain iterator state (``process_{i}-of-{n}.json``), so a resumed run
             sees exactly the batches an uninterrupted run would have seen.

Restores take a target tree of ``jax.ShapeDtypeStruct`` with shardings, so a checkpoint written on
one mesh is read onto any other mesh shape.

Initialisation order of a run (`mavilt_jax/train.py`):
  1. resume from the latest checkpoint in ``workdir/checkpoints``;
  2. else take the parameters of ``config.init_from`` (a previous stage with the same model);
  3. else ``stage.restore_pretrained`` (imported LLM weights, a text-pretrained checkpoint, ...);
  4. else the state from ``stage.init_state`` (from scratch).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any


def checkpoint_dir(path: str) -> str:
    """A workdir or its ``checkpoints`` folder -> the folder holding the step directories."""
    sub = os.path.join(path, "checkpoints")
    return sub if epath.Path(sub).is_dir() or not epath.Path(path).is_dir() else path


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, file-size limit, lost permissions, ...).

    The step being written is left as an unfinished ``<step>.orbax-checkpoint-tmp*`` folder, which
    restores ignore, so the previous checkpoint is still the latest."""


class Checkpointer:
    """Saves and restores train state + data iterator under ``directory`` (keeps the last ``keep``).

    A failed save (synchronous, or found when an asynchronous one is waited for) raises
    `CheckpointSaveError` naming the step and the folder."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.every_steps = every_steps
        self._pending_step: int | None = None
        self.manager = ocp.CheckpointManager(
            epath.Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=max(every_steps, 1),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Every ``every_steps`` steps (the loop adds the last step and preemption)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: PyTree, data_iterator: Any = None, *, force: bool = False) -> bool:
        """Starts an (asynchronous) save; the iterator state is captured before this returns."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        # orbax first waits for the previous asynchronous save: its failure surfaces here.
        with self._save_errors():
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        self._pending_step = step if saved else self._pending_step
        return saved

    @contextlib.contextmanager
    def _save_errors(self):
        """Turns a failure of the save in flight into `CheckpointSaveError` (message names the folder)."""
        try:
            yield
        except CheckpointSaveError:
            raise
        except Exception as e:  # orbax/tensorstore report I/O failures as ValueError, OSError, ...
            step = self._pending_step
            self._pending_step = None
            what = f"step {step}" if step is not None else "a checkpoint"
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointSaveError(f"saving {what} to {self.manager.directory} failed ({detail}); the previous "
                                      f"checkpoint (step {self.latest_step()}) is kept") from e

    def restore(self, step: int, target: PyTree, data_iterator: Any = None) -> PyTree:
        """Restores the state onto ``target``'s shardings (and the iterator in place, if given)."""
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None and (self.manager.directory / str(step) / "data").exists():
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        with self._save_errors():
            self.manager.wait_until_finished()
        self._pending_step = None

    def close(self) -> None:
        """Waits for a pending asynchronous save, then releases the manager."""
        try:
            self.wait()
        except CheckpointSaveError:
            with contextlib.suppress(Exception):  # the save's own error is the one to report
                self.manager.close()
            raise
        self.manager.close()


def abstract_with_shardings(abstract_tree: PyTree, shardings: PyTree) -> PyTree:
    """Attaches shardings to a tree of ShapeDtypeStruct (the restore target)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def load_subtree(path: str, subtree: str = "params", target: PyTree | None = None, step: int | None = None) -> PyTree:
    """Reads one field of a saved `TrainState` (``params``, ``frozen``, ...) from a workdir or
    checkpoint folder, without the optimizer state.

    With ``target`` (ShapeDtypeStructs, optionally with shardings) the arrays are placed like it;
    without, they come back as the saved shapes on the default device. Used to start a stage from
    another stage's checkpoint.
    """
    directory = epath.Path(checkpoint_dir(path)).absolute()
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    if target is None:
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore())).state
        result = tree[subtree]
    else:
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding) if getattr(a, "sharding", None) is not None
            else ocp.RestoreArgs(), target)
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={subtree: target}, restore_args={subtree: restore_args}, partial_restore=True))).state
        result = tree[subtree]
    manager.close()
    return result


def read_workdir_config(path: str) -> dict[str, Any]:
    """The ``config.json`` the training loop writes in a workdir (given the workdir or its checkpoints/)."""
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        file = os.path.join(folder, "config.json")
        if os.path.isfile(file):
            with open(file) as f:
                return json.load(f)
    raise FileNotFoundError(f"no config.json in {path} or its parent (is it a training workdir?)")

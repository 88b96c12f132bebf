"""The contract between a training stage and the shared training loop (`mavilt_jax/train.py`).

Every stage of the project (CXR encoder, VQ-GAN tokenizer, text pretraining, multimodal stage 1,
instruction tuning stage 2) is one `Stage`. The loop owns everything that is the same for all of
them: the mesh and shardings, abstract state creation, the grain input pipeline, jitting the step
(once, with the state donated), checkpoints, metric writers, NaN checks and preemption. A stage
owns only what is specific to it: how an example becomes model inputs, how the state is created,
and the one train step.

Contract (all functions are pure and traceable unless stated otherwise):

- ``setup(workdir)`` (optional): host code run first; files the stage keeps beside its checkpoints.
- ``data_source(split)`` (optional): a stage-made random-access source instead of ``config.data``.
- ``preprocess(example, rng)``: numpy in, numpy out, runs in grain workers; fixed shapes so that
  batches stack. ``rng`` is a ``np.random.Generator`` seeded per (seed, record index), so the data
  order and augmentation are reproducible and resumable.
- ``init_state(rng)``: builds the full `TrainState`. The loop calls it under ``jax.eval_shape``
  to get shapes, derives shardings from the logical-axis annotations, then runs it under
  ``jax.jit(..., out_shardings=...)``; it must not read files (use ``restore_pretrained`` for that).
- ``train_step(state, batch, rng)`` -> ``(state, measurements)``: the one jitted step of the stage.
  ``rng`` is already folded with the step. ``measurements`` is a flat dict of scalars and holds
  every loss term by name (the loop names the first non-finite one when it stops a run).
- ``eval_step(state, batch)`` -> measurements averaged by the loop over the validation split.
- ``restore_pretrained(state)``: host code, called once after a fresh init when no checkpoint
  exists in the workdir and no ``init_from`` is given; imports pretrained weights or a previous
  stage's checkpoint.
- ``continue_from(state, workdir)``: host code, called instead when ``init_from`` is given, after
  the loop took its ``params`` and ``frozen``; a stage may take more of that run from it.
- ``periodic_eval(state, writer, step, workdir)``: host code for samples (images, reports).
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

PyTree = Any
Batch = Mapping[str, np.ndarray]
Measurements = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """What a stage trains and what the loop checkpoints.

    step: int32 scalar, the number of updates applied so far.
    params: the trained parameters (those the optimizer updates).
    opt_state: the optax state of ``params``.
    extra: anything else the step carries and checkpoints: discriminator parameters and their
      optimizer state, EMA codebooks, batch statistics. ``None`` when unused.
    frozen: arrays the step reads but never updates: the pretrained anchor of Eq. 11, the frozen
      VQ-GAN decoder or phi of Eq. 4. Checkpointed too, so a resumed run needs no other file.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    extra: PyTree = None
    frozen: PyTree = None


def zeros_like_init(init_fn: Callable[[], Any]) -> Any:
    """Zeros shaped like what ``init_fn`` returns, without running or compiling it: placeholders in
    ``init_state`` for frozen arrays that a checkpoint replaces right after (compiling a network's
    random initialiser costs seconds to tens of seconds)."""
    return jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype), jax.eval_shape(init_fn))


def eval_rng(example: Mapping[str, Any]) -> np.random.Generator:
    """The random draws of one validation example: fixed per study (its ``study_id``), so every
    evaluation sees the same sequences, yet different across studies. One generator seeded alike
    for all examples would make the same draw for each (stage 2 validated one task only)."""
    study = example.get("study_id", b"")
    study = study.decode() if isinstance(study, bytes) else str(study)
    return np.random.default_rng(zlib.crc32(study.encode()))


class StageDataError(ValueError):
    """The data cannot feed the stage as configured (a user error: the run stops before training)."""


class Stage(abc.ABC):
    """One training stage; see the module docstring for the contract."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # ---- host setup -----------------------------------------------------------------------------
    def setup(self, workdir: str) -> None:
        """Host code, called once by the loop before anything else: build or load what the stage
        keeps beside its checkpoints (a trained text tokenizer, the extended vocabulary). Reuses
        what an earlier run left in ``workdir``, so a resumed run sees the same files. Nothing by
        default."""
        return None

    # ---- data (host, numpy) ------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One TFDS example -> one training example of fixed shapes."""

    def check_train_source(self, source: Any) -> None:
        """Raises `StageDataError` when ``source`` cannot feed this stage as configured; called by
        the loop before training. Nothing to check by default."""
        return None

    def prepare_train_source(self, source: Any) -> Any:
        """The training source as the loop reads it; the loop calls this once, after
        `check_train_source`. ``source`` itself by default (stages may precompute per-study work
        that does not depend on the trained parameters)."""
        return source

    def data_source(self, split: str) -> Any | None:
        """A random-access source (``len`` and ``[i]``) of ``split`` ("train" / "validation") made
        by the stage itself (e.g. a text corpus); ``None`` (default): the loop reads ``config.data``
        with `mavilt_jax.data.pipeline.load_source`."""
        return None

    def source(self, split: str) -> Any:
        """The random-access source of ``split``: the stage's own (`data_source`), else the TFDS
        dataset named by ``config.data`` (built on first use when it is the synthetic one)."""
        own = self.data_source(split)
        if own is not None:
            return own
        from mavilt_jax.data import pipeline  # Imported here: the TFDS builders are only needed now.

        data = self.config.data
        return pipeline.load_source(data.name, split, data_dir=data.get("data_dir"),
                                    builder_config=data.get("builder_config"))

    def eval_preprocess(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Deterministic preprocessing for validation; by default the train one with `eval_rng`."""
        return self.preprocess(example, eval_rng(example))

    # ---- state and step (traced) --------------------------------------------------------------
    @abc.abstractmethod
    def init_state(self, rng: jax.Array) -> TrainState:
        """The initial train state; pure, so the loop can build it abstractly and sharded."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Measurements]:
        """The stage's one train step."""

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        """Validation measurements for one batch (averaged by the loop)."""
        return {}

    # ---- host hooks ---------------------------------------------------------------------------
    def restore_pretrained(self, state: TrainState) -> TrainState:
        """Fills ``state`` from pretrained weights or a previous stage; identity by default."""
        return state

    def continue_from(self, state: TrainState, workdir: str) -> TrainState:
        """``state`` (params and frozen arrays already from ``workdir``) with more of that run
        (`extra`); identity by default."""
        return state

    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Writes samples (image grids, generated reports); nothing by default."""
        return None

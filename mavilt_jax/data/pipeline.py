"""The input pipeline: a TFDS random-access source -> grain, one shard per JAX process.

Train data: ``MapDataset.source -> shard -> shuffle -> repeat -> random_map(preprocess) -> batch``.
Every random choice is a function of ``(seed, position)``: the shuffle is grain's index shuffle
(reseeded each epoch), and ``preprocess`` gets a ``np.random.Generator`` that grain seeds from
the seed and the element's position in the repeated, shuffled stream. So the same seed gives the
same batches on any machine, a different epoch gets a different order and augmentation, and the
iterator's state is a few integers that the training loop checkpoints beside the model
(``get_state`` / ``set_state``).

Eval data: every example of the process's shard exactly once, in source order, the last batch
padded with copies of a real example and marked by the boolean ``valid`` [B] key. All processes
yield the same number of batches, so a jitted multi-host eval step never waits on a missing batch.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from mavilt_jax import locks, progress

Example = Mapping[str, Any]
Preprocess = Callable[[Example, np.random.Generator], dict[str, np.ndarray]]
EvalPreprocess = Callable[[Example], dict[str, np.ndarray]] | Preprocess

# Seed of the fixed generator handed to a train-style preprocess during evaluation.
_EVAL_RNG_SEED = 0
# Builders that generate their own data: prepared on first use, so a fresh machine can train.
_SELF_GENERATING = ("synthetic_cxr",)


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


def _register_builders() -> None:
    """Imports the project's TFDS builders so that ``tfds.builder(name)`` finds them."""
    for module in ("tfds_builders.iu_xray", "tfds_builders.mimic_cxr", "tfds_builders.synthetic_cxr"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Only tolerate the builder package itself being absent (e.g. a trimmed install);
            # a missing dependency inside a present builder is a real error.
            if e.name != module:
                raise
            logging.debug("TFDS builder %s is not available.", module)


def load_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    builder_config: str | None = None,
    manual_dir: str | None = None,
) -> Sequence[Example]:
    """Returns the random-access source (``tfds.data_source``) of one split of a dataset.

    Args:
      name: registered builder name, e.g. ``"synthetic_cxr"``, ``"iu_xray"``, ``"mimic_cxr"``.
      split: TFDS split, e.g. ``"train"``, ``"validation"``, ``"test[:10%]"``.
      data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``).
      builder_config: name of a builder config, e.g. ``"r128"``.
      manual_dir: for builders that read local files (IU X-ray, MIMIC-CXR): where they are. When
        given and the dataset is not prepared yet, it is built from there.

    Raises:
      FileNotFoundError: the dataset is not prepared and cannot be built here (no ``manual_dir``
        for a builder that needs one).
    """
    _register_builders()
    full_name = f"{name}/{builder_config}" if builder_config else name
    builder = tfds.builder(full_name, data_dir=data_dir)
    if not builder.is_prepared():
        if name not in _SELF_GENERATING and manual_dir is None:
            raise FileNotFoundError(
                f"Dataset {full_name} is not prepared in {builder.data_dir}. Build it once from the local "
                f"files: load_source({name!r}, {split!r}, builder_config={builder_config!r}, "
                f"data_dir={data_dir!r}, manual_dir=<folder with the files>); the builder's "
                "MANUAL_DOWNLOAD_INSTRUCTIONS describe the folder."
            )
        # One build at a time: a second process waits, then reads what the first one built.
        with locks.build_lock(builder.data_dir, full_name):
            builder = tfds.builder(full_name, data_dir=data_dir)  # it may be prepared by now
            if not builder.is_prepared():
                _prepare(builder, full_name, manual_dir)
    return builder.as_data_source(split=split)


def _prepare(builder: tfds.core.DatasetBuilder, full_name: str, manual_dir: str | None) -> None:
    """Builds a dataset that is not prepared yet: generated, or read from ``manual_dir``."""
    if manual_dir is None:
        progress.show(f"generating {full_name} in {builder.data_dir} (first use)")
        started = time.monotonic()
        # TFDS prints its "Downloading and preparing ..." lines on stdout: they go to the log.
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            builder.download_and_prepare(file_format="array_record")
        for line in printed.getvalue().splitlines():
            logging.info("%s", line)
        progress.show(f"generated {full_name} in {progress.format_duration(time.monotonic() - started)}")
    else:
        logging.info("Building %s from %s.", full_name, manual_dir)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )


def _even_shard(ds: grain.MapDataset, shard_index: int, shard_count: int) -> grain.MapDataset:
    """Strided shard of equal length on every process (drops at most ``shard_count - 1`` examples).

    Equal lengths keep processes in step when ``num_epochs`` is finite; striding keeps each shard
    a sample of the whole source even when the source is sorted (e.g. by study).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}.")
    per_shard = len(ds) // shard_count
    if per_shard == 0:
        raise ValueError(f"Source of {len(ds)} examples cannot be split into {shard_count} shards.")
    return ds[shard_index : per_shard * shard_count : shard_count]


def make_train_dataset(
    source: RandomAccessSource,
    preprocess: Preprocess,
    *,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    worker_buffer_size: int = 1,
    read_threads: int = 2,
) -> grain.IterDataset:
    """The training stream of one process: numpy batches of ``preprocess``-ed examples.

    Args:
      source: a random-access source (``load_source`` or any sequence of dicts).
      preprocess: ``(example, rng) -> dict of numpy arrays`` of fixed shapes; ``rng`` is seeded by
        ``(seed, position in the stream)``, so augmentation is reproducible and resumable.
      batch_size: examples per batch on this process (the per-process share of the global batch).
      seed: seeds the shuffle and ``preprocess``'s generators.
      shard_index, shard_count: this process's shard (``jax.process_index()``,
        ``jax.process_count()``); shards are disjoint and of equal length.
      shuffle: shuffle the shard (reshuffled each epoch).
      num_epochs: passes over the shard; ``None`` repeats forever.
      drop_remainder: drop a last incomplete batch (only matters when ``num_epochs`` is finite).
      worker_count: grain worker processes for ``preprocess`` (0: threads in this process).
      worker_buffer_size: batches each worker process keeps ready.
      read_threads: threads that read and preprocess examples in each process.

    Returns:
      A ``grain.IterDataset``; ``iter(ds)`` is a ``grain.DatasetIterator`` with ``get_state()`` and
      ``set_state()``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")
    # grain derives distinct seeds for the shuffle and the random map from this one seed.
    ds = _even_shard(grain.MapDataset.source(source), shard_index, shard_count).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(preprocess)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * batch_size))
    iter_ds = iter_ds.batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (tests, notebooks) they
        # would be unparsed, so fall back to their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        )
    return iter_ds


def _deterministic(preprocess: EvalPreprocess) -> Callable[[Example], dict[str, np.ndarray]]:
    """Accepts a Stage's ``eval_preprocess(example)`` or a train-style ``preprocess(example, rng)``.

    The latter gets a fresh generator with a fixed seed for every example, so evaluation does not
    depend on the order or the batch an example lands in.
    """
    try:
        params = [
            p
            for p in inspect.signature(preprocess).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):  # builtins without a signature: assume one argument
        params = [None]
    if len(params) >= 2:
        return lambda example: preprocess(example, np.random.default_rng(_EVAL_RNG_SEED))
    return preprocess


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def make_eval_batches(
    source: RandomAccessSource,
    preprocess: EvalPreprocess,
    *,
    batch_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    read_threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of this process's shard exactly once, in source order, in padded batches.

    Shards are strided (``source[shard_index::shard_count]``) and together cover the source. Each
    process yields ``ceil(ceil(len(source) / shard_count) / batch_size)`` batches; slots past the
    end of a shard repeat one of its examples and have ``valid = False``, so metrics must be
    weighted by ``valid``.

    Args:
      source: a random-access source.
      preprocess: ``eval_preprocess(example)``, or ``preprocess(example, rng)`` which is then
        called with a fixed-seed generator.
      batch_size: examples per batch on this process.
      shard_index, shard_count: this process's shard.

    Yields:
      dicts of numpy arrays with leading dimension ``batch_size`` plus ``valid`` (bool [B]).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}.")
    num_examples = len(source)
    if num_examples == 0:
        return
    max_shard_len = -(-num_examples // shard_count)
    num_batches = -(-max_shard_len // batch_size)
    ds = grain.MapDataset.source(source)[shard_index::shard_count].map(_deterministic(preprocess))
    shard_len = len(ds)
    examples = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)))
    # Padding repeats the shard's first example; a shard is empty only when there are more
    # processes than examples, and then pads with example 0 of the whole source.
    filler = None if shard_len else _deterministic(preprocess)(source[0])
    for _ in range(num_batches):
        batch = []
        for _ in range(batch_size):
            example = next(examples, None)
            if example is None:
                break
            batch.append(example)
        if filler is None:
            filler = batch[0]
        num_valid = len(batch)
        batch.extend([filler] * (batch_size - num_valid))
        out = _stack(batch)
        out["valid"] = np.arange(batch_size) < num_valid
        yield out

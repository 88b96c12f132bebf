"""Device mesh, parameter shardings from logical axis names, and global batches.

Parameters carry logical axis names (``nn.with_logical_partitioning``); the config maps them to
the mesh axes ``data``, ``fsdp`` and ``tensor`` with a short rule table
(`configs/common.py::LOGICAL_AXIS_RULES`). Shardings are derived from an abstract state
(``jax.eval_shape``) so no full-size array ever exists on one device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
# The mesh axes a batch dimension is split over.
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices; one entry of ``shape`` may be -1 (the devices that remain)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {tuple(shape)} and axes {tuple(axes)} differ in length")
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh dimension may be -1, got {tuple(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {tuple(shape)}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * len(axes)
    if devices == list(jax.devices()):
        return jax.make_mesh(tuple(shape), tuple(axes), axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), tuple(axes), axis_types=auto)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. a vocabulary of 50,182 rows over a
    tensor axis of 4), so any model shape runs on any mesh; the dimension is then replicated."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for name in names:
            if dim % (math.prod(mesh.shape[n] for n in kept) * mesh.shape[name]) == 0:
                kept.append(name)
        if len(kept) != len(names):
            logging.log_first_n(logging.INFO, "replicating a dimension of %d over %s (does not divide)", 20, dim, names)
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> PyTree:
    """NamedShardings for a (possibly boxed) abstract tree; leaves without names are replicated.

    Returns a tree of the UNBOXED structure (plain arrays), matching ``nn.unbox(tree)``. A box may
    hold a subtree rather than one array (optax's masked states put ``MaskedNode`` in boxes); every
    array inside takes the box's spec.
    """

    def shard(x):
        if isinstance(x, nn.meta.AxisMetadata):
            names = x.get_partition_spec() if hasattr(x, "get_partition_spec") else PartitionSpec()
            spec = nn.logical_to_mesh_axes(tuple(names), rules) if isinstance(x, nn.LogicallyPartitioned) else names
            return jax.tree.map(lambda leaf: NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh)), getattr(x, "value", None))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(shard, abstract_tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays split over the data-parallel axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def describe(tree: PyTree) -> str:
    """One line per leaf: path, shape and mesh spec (logged once at startup)."""
    lines = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        spec = getattr(getattr(leaf, "sharding", None), "spec", None)
        lines.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {spec}")
    return "\n".join(lines)

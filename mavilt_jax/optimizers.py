"""The optimizer every stage uses, and the update that reports gradient/parameter/update norms.

AdamW with linear warmup and cosine decay, global-norm gradient clipping, gradient accumulation
(``optax.MultiSteps``) and parameters frozen by name (``optax.multi_transform`` with
``set_to_zero``), all from one config block (`configs/common.py::optimizer_config`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``end_lr_factor * learning_rate``."""
    decay_steps = config.get("decay_steps") or total_steps
    warmup = min(config.warmup_steps, max(decay_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(decay_steps, warmup + 1),
        end_value=config.learning_rate * config.end_lr_factor,
    )


def param_path(path: tuple[Any, ...]) -> str:
    """``(DictKey('decoder'), DictKey('layer_0'), ...)`` -> ``"decoder/layer_0/..."``."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def freeze_labels(params: PyTree, patterns: tuple[str, ...]) -> PyTree:
    """"frozen" for every parameter whose path matches one of ``patterns`` (re.search), else "trained"."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(c.search(param_path(path)) for c in compiled) else "trained", params)


def make_optimizer(config: ml_collections.ConfigDict, params: PyTree | None = None, *,
                   total_steps: int = 1000) -> optax.GradientTransformation:
    """The optax transformation of ``config`` (an `optimizer_config` block).

    ``params`` (or an abstract tree of the same structure) is only needed to resolve
    ``freeze_patterns``; without it the labels are computed from the tree ``init`` receives.
    Weight decay skips 1-D parameters (norm scales, biases), as is usual for transformers.
    """
    schedule = make_schedule(config, total_steps)
    chain = []
    if config.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    decay_mask = lambda tree: jax.tree.map(lambda p: jnp.ndim(p) > 1, tree)
    chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=decay_mask))
    tx = optax.chain(*chain)
    patterns = tuple(config.get("freeze_patterns") or ())
    if patterns:
        labels: PyTree | Callable[[PyTree], PyTree]
        labels = freeze_labels(params, patterns) if params is not None else (lambda p: freeze_labels(p, patterns))
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    if config.get("accumulation_steps", 1) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.accumulation_steps)
    return tx


def global_norm(tree: PyTree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def apply_gradients(state: Any, grads: PyTree, tx: optax.GradientTransformation) -> tuple[Any, dict[str, jax.Array]]:
    """One optimizer update of ``state.params``; returns the new state and the norms the loop logs.

    ``state`` is a `TrainState` (``step``, ``params``, ``opt_state``); ``step`` counts calls, so with
    gradient accumulation it counts micro-steps.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    measurements = {
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(params),
        "update_norm": global_norm(updates),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), measurements

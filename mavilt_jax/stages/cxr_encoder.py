"""Training phi, the CXR classifier behind Eq. 4's feature term, and loading it frozen.

Targets (stated rule): positive (1) -> 1; negative (0) -> 0; absent (-2, "not mentioned") -> 0,
as CheXpert classifiers usually treat blanks (a finding nobody mentions is taken as not present);
uncertain (-1) -> ignored (masked out of the BCE, CheXpert's "U-Ignore"). ``absent_as_negative =
False`` masks absent labels too.

Validation: per-finding AUROC (``periodic_eval``) on findings that have both classes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from scipy import stats

from mavilt_jax import optimizers
from mavilt_jax.data import labels as labels_lib
from mavilt_jax.deprecation import moved_attributes
from mavilt_jax.models import cxr_encoder, vqgan
from mavilt_jax.stages.base import Batch, Measurements, Stage, TrainState


def model_config(config: ml_collections.ConfigDict) -> cxr_encoder.CxrEncoderConfig:
    return cxr_encoder.cxr_encoder_config(config.model)


def targets_and_mask(label_states: np.ndarray, absent_as_negative: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CheXpert states [..., 14] (1/0/-1/-2) -> (BCE targets, mask) float32, by the rule above."""
    label_states = np.asarray(label_states)
    targets = (label_states == labels_lib.POSITIVE).astype(np.float32)
    known = (label_states == labels_lib.POSITIVE) | (label_states == labels_lib.NEGATIVE)
    if absent_as_negative:
        known |= label_states == labels_lib.ABSENT
    return targets, known.astype(np.float32)


def masked_bce(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean binary cross-entropy over the unmasked (example, finding) pairs."""
    per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets).astype(bool)
    n_pos, n_neg = targets.sum(), (~targets).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_finding_auroc(scores: np.ndarray, label_states: np.ndarray, absent_as_negative: bool = True) -> dict[str, float]:
    """AUROC of each observation with both classes among the known labels ([N, 14] inputs)."""
    targets, mask = targets_and_mask(label_states, absent_as_negative)
    result = {}
    for i, name in enumerate(labels_lib.OBSERVATIONS):
        keep = mask[:, i] > 0
        value = auroc(scores[keep, i], targets[keep, i])
        if not np.isnan(value):
            result[name] = value
    return result


class CxrEncoderStage(Stage):
    """Masked-BCE training of phi on the 14 observations."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model = cxr_encoder.CxrEncoder(model_config(config))
        self.tx = optimizers.make_optimizer(config.optimizer, total_steps=config.total_steps)
        self.absent_as_negative = config.get("absent_as_negative", True)

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = vqgan.to_model_range(example["image"], self.config.model.image_size)
        shift = self.config.get("augment_shift", 0)
        if shift:
            # A small random translation (edge padding), the only augmentation: flips would move
            # the heart to the wrong side, which a radiograph never shows.
            dy, dx = rng.integers(-shift, shift + 1, size=2)
            padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
            image = padded[shift + dy : shift + dy + image.shape[0], shift + dx : shift + dx + image.shape[1]]
        targets, mask = targets_and_mask(example["labels"], self.absent_as_negative)
        return {"image": image, "targets": targets, "mask": mask}

    def eval_preprocess(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        targets, mask = targets_and_mask(example["labels"], self.absent_as_negative)
        return {
            "image": vqgan.to_model_range(example["image"], self.config.model.image_size),
            "targets": targets,
            "mask": mask,
            "labels": np.asarray(example["labels"], np.int8),
        }

    def init_state(self, rng: jax.Array) -> TrainState:
        size = self.config.model.image_size
        params = self.model.init(rng, jnp.zeros((1, size, size, 1)))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Measurements]:
        del rng

        def loss_fn(params):
            logits = self.model.apply({"params": params}, batch["image"])
            return masked_bce(logits, batch["targets"], batch["mask"]), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state, norms = optimizers.apply_gradients(state, grads, self.tx)
        correct = ((logits > 0) == (batch["targets"] > 0.5)).astype(jnp.float32)
        accuracy = jnp.sum(correct * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
        return state, {"loss": loss, "accuracy": accuracy, **norms}

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        logits = self.model.apply({"params": state.params}, batch["image"])
        mask = batch["mask"] * batch["valid"][:, None] if "valid" in batch else batch["mask"]
        return {"loss": masked_bce(logits, batch["targets"], mask)}

    @functools.cached_property
    def _predict(self):
        return jax.jit(lambda params, images: jax.nn.sigmoid(self.model.apply({"params": params}, images)))

    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Per-finding AUROC on the validation split; scalars and ``auroc_<step>.json``."""
        from mavilt_jax.data import pipeline

        source = self.source(self.config.data.get("eval_split", "validation"))
        params = jax.device_get(state.params)
        scores, states = [], []
        for batch in pipeline.make_eval_batches(source, self.eval_preprocess, batch_size=self.config.batch_size):
            valid = batch["valid"]
            scores.append(np.asarray(self._predict(params, batch["image"]))[valid])
            states.append(batch["labels"][valid])
        result = per_finding_auroc(np.concatenate(scores), np.concatenate(states), self.absent_as_negative)
        if result:
            result["mean"] = float(np.mean(list(result.values())))
        writer.write_scalars(step, {f"auroc/{k}": v for k, v in result.items()})
        with open(os.path.join(workdir, f"auroc_{step}.json"), "w") as f:
            json.dump(result, f, indent=2)
        logging.info("Validation AUROC at step %d: %s", step, result)


# Loaders moved beside the model and the checkpoints (old names kept for a while).
__getattr__ = moved_attributes(__name__, {
    "load_cxr_encoder": "mavilt_jax.models.cxr_encoder:load_cxr_encoder",
    "_read_workdir_config": "mavilt_jax.checkpointing:read_workdir_config",
})

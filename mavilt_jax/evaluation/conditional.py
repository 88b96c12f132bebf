"""Conditional correctness of report -> image generation (Table II).

An independent CXR classifier (one not used to train the tokenizer or the generator) reads each
generated image; for every finding, the finding the report *asked for* is the target and the
classifier's probability the score:
  * AUROC per finding (rank-based, ties half; :func:`vqa_metrics.auroc`), and its macro mean over
    the findings where both classes occur;
  * accuracy per finding at a probability threshold (default 0.5).
Requested labels are CheXpert states of the conditioning report: positive -> 1; negative and
blank -> 0; uncertain requests are left out of that finding's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation.vqa_metrics import auroc


def conditional_correctness(probabilities: np.ndarray, requested: np.ndarray,
                            observations: Sequence[str] = L.OBSERVATIONS[1:],
                            threshold: float = 0.5) -> dict[str, float | int]:
    """Per-finding AUROC / accuracy of classifier probabilities [N, 14] against requested labels
    [N, 14] (CheXpert states); keys ``auroc/<name>``, ``accuracy/<name>``, ``n/<name>``,
    ``auroc_macro``, ``accuracy_macro``. ``No Finding`` is not scored by default."""
    probabilities = np.asarray(probabilities, np.float64)
    requested = np.asarray(requested)
    if (probabilities.shape != requested.shape or probabilities.ndim != 2
            or probabilities.shape[1] != L.NUM_OBSERVATIONS):
        raise ValueError(f"expected [N, {L.NUM_OBSERVATIONS}] probabilities and labels, got "
                         f"{probabilities.shape} and {requested.shape}")
    out: dict[str, float | int] = {}
    aurocs, accuracies = [], []
    for name in observations:
        i = L.INDEX[name]
        keep = requested[:, i] != L.UNCERTAIN
        target = requested[keep, i] == L.POSITIVE
        score = probabilities[keep, i]
        out[f"n/{name}"] = int(keep.sum())
        out[f"n_requested/{name}"] = int(target.sum())
        if not keep.any():
            continue
        acc = float(((score >= threshold) == target).mean())
        out[f"accuracy/{name}"] = acc
        accuracies.append(acc)
        value = auroc(score, target)
        if np.isfinite(value):
            out[f"auroc/{name}"] = value
            aurocs.append(value)
    out["auroc_macro"] = float(np.mean(aurocs)) if aurocs else float("nan")
    out["accuracy_macro"] = float(np.mean(accuracies)) if accuracies else float("nan")
    out["findings_scored"] = len(aurocs)
    return out


def phi_classifier_fn(model, params) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities [N, 14] of a CXR classifier (``CxrEncoder``): sigmoid of its logits."""
    import jax

    from mavilt_jax.evaluation.frechet import to_unit_range

    probs = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        return np.asarray(probs(params, to_unit_range(images)), np.float64)

    return classifier_fn


def classifier_scorers(checkpoint: str) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]],
                                                 Callable[[np.ndarray], np.ndarray]]:
    """({"phi": features_fn}, classifier_fn) of a trained CXR classifier workdir (phi or the
    independent judge), both taking uint8 images [N, H, W] at any size and feeding them at the
    classifier's training size."""
    from mavilt_jax import checkpointing
    from mavilt_jax.evaluation import frechet
    from mavilt_jax.models import cxr_encoder, vqgan

    cfg, params = cxr_encoder.load_cxr_encoder(checkpoint)
    size = int(checkpointing.read_workdir_config(checkpoint)["model"]["image_size"])
    model = cxr_encoder.CxrEncoder(cfg)
    features, classify = frechet.phi_features_fn(model, params), phi_classifier_fn(model, params)

    def resized(fn):
        return lambda images: fn(vqgan.to_model_range(np.asarray(images)[..., None], size))

    return {"phi": resized(features)}, resized(classify)

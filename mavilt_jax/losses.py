"""Loss functions of MAViLT, as plain functions.

- Tokenizer (Eq. 4): the clinical information-preserving reconstruction loss, the vector-quantizer
  terms and the GAN terms with the adaptive generator weight.
- Multimodal training (Eq. 11-12): the weight anchor ||theta - theta_pretrained||^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ==== Tokenizer losses (Eq. 4, VQ, GAN) ==========================================================

# ==== Weight anchor (Eq. 11) =====================================================================
#
# L_reg = sum over pretrained parameters of ||theta - theta_pretrained||^2. The rows that
# `mavilt_jax.data.vocab.extend_embeddings` appends (image codes, specials) have no pretrained
# value and are free. The new rows are appended at the end of the vocabulary axis, so the anchor
# of the embedding table [V0, D] and of the output head [D, V0] is just their leading block, and
# every parameter is compared with its anchor over the anchor's shape.
#
# Memory: one extra copy of the pretrained parameters in ``dtype`` (bfloat16 by default: 2 bytes
# per parameter, e.g. 0.27 GB for a 135M model, 14 GB for 7B), kept in ``TrainState.frozen`` and
# sharded like the parameters. The bf16 rounding moves the anchor by at most 2^-9 relative per
# entry, far below the distances the penalty acts on.

_VOCAB_AXIS = {("embed", "embedding"): 0, ("lm_head", "kernel"): 1}


def _key_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def make_anchor(params, pretrained_rows: int, dtype=jnp.bfloat16):
    """A frozen copy theta_pretrained of ``params`` for Eq. 11, in ``dtype``.

    The embedding table and output head keep only their first ``pretrained_rows`` rows/columns
    (the pretrained vocabulary); every other parameter is copied whole.
    """

    def anchor(path, x):
        names = _key_names(path)
        for suffix, axis in _VOCAB_AXIS.items():
            if names[-2:] == suffix:
                x = jax.lax.slice_in_dim(x, 0, pretrained_rows, axis=axis)
        return jax.lax.stop_gradient(jnp.asarray(x, dtype))

    return jax.tree_util.tree_map_with_path(anchor, params)


def weight_anchor_loss(params, anchor) -> jax.Array:
    """||theta - theta_pretrained||^2 of Eq. 11 over the pretrained entries, in float32.

    ``anchor`` comes from `make_anchor`; each parameter is compared over the anchor's shape, so
    the appended vocabulary rows never enter (their gradient is exactly zero).
    """

    def squared_distance(a, theta):
        theta = theta[tuple(slice(0, n) for n in a.shape)]
        return jnp.sum(jnp.square(theta.astype(jnp.float32) - a.astype(jnp.float32)))

    terms = jax.tree.leaves(jax.tree.map(squared_distance, anchor, params))
    return sum(terms, jnp.zeros((), jnp.float32))

"""Loss functions of MAViLT, as plain functions.

- Tokenizer (Eq. 4): the clinical information-preserving reconstruction loss, the vector-quantizer
  terms and the GAN terms with the adaptive generator weight.
- Multimodal training (Eq. 11-12): the weight anchor ||theta - theta_pretrained||^2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# ==== Tokenizer losses (Eq. 4, VQ, GAN) ==========================================================

def image_gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Forward finite differences of images [B, H, W, C] along height and width.

    Returns (dy [B, H-1, W, C], dx [B, H, W-1, C]).
    """
    return x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]


def clinical_reconstruction_loss(
    x: jax.Array,
    x_hat: jax.Array,
    *,
    lambda_grad: float,
    lambda_feat: float,
    phi_features_fn: Callable[[jax.Array], Sequence[jax.Array]] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clinical information-preserving reconstruction loss (Eq. 4, without the VQ/GAN terms).

    L = ||x - x_hat||_1 + lambda_grad * ||grad x - grad x_hat||^2 + lambda_feat * ||phi(x) - phi(x_hat)||^2

    - L1: mean absolute error over all pixels.
    - gradient term: mean squared difference of the vertical finite differences plus the same for
      the horizontal ones (edges such as rib borders, lines and tubes carry the findings).
    - feature term: mean squared difference of phi's activations, averaged over the layers that
      ``phi_features_fn`` returns; phi(x) is a fixed target (stop-gradient).

    A weight that is a Python 0 removes its term and its cost: phi is not even called, which is
    why the weights must be static numbers rather than traced arrays.

    Args:
      x, x_hat: images [B, H, W, C] in the same range.
      lambda_grad, lambda_feat: static weights.
      phi_features_fn: images -> list of activations of the frozen CXR encoder phi.

    Returns:
      (loss scalar, {"l1", "grad", "feat"}) with the unweighted terms (0 for removed ones).
    """
    if not isinstance(lambda_grad, (int, float)) or not isinstance(lambda_feat, (int, float)):
        raise TypeError("lambda_grad and lambda_feat must be Python numbers (static), not arrays")
    l1 = jnp.mean(jnp.abs(x - x_hat))
    zero = jnp.zeros((), l1.dtype)
    grad_term = zero
    if lambda_grad != 0:
        dy, dx = image_gradients(x)
        dy_hat, dx_hat = image_gradients(x_hat)
        grad_term = jnp.mean((dy - dy_hat) ** 2) + jnp.mean((dx - dx_hat) ** 2)
    feat_term = zero
    if lambda_feat != 0:
        if phi_features_fn is None:
            raise ValueError("lambda_feat > 0 needs phi_features_fn (the frozen CXR encoder)")
        feats = phi_features_fn(x)
        feats_hat = phi_features_fn(x_hat)
        feat_term = sum(
            jnp.mean((jax.lax.stop_gradient(f) - f_hat) ** 2) for f, f_hat in zip(feats, feats_hat, strict=True)
        ) / len(feats)
    loss = l1 + lambda_grad * grad_term + lambda_feat * feat_term
    return loss, {"l1": l1, "grad": grad_term, "feat": feat_term}


def vq_loss(z: jax.Array, q: jax.Array, *, commitment_cost: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Vector-quantizer terms (the VQ part of Eq. 4): ||sg(z) - q||^2 + beta ||z - sg(q)||^2.

    The codebook term moves codes towards encoder outputs; the commitment term keeps encoder
    outputs near their codes. Both are means over elements.
    """
    codebook = jnp.mean((jax.lax.stop_gradient(z) - q) ** 2)
    commitment = jnp.mean((z - jax.lax.stop_gradient(q)) ** 2)
    return codebook + commitment_cost * commitment, {"codebook_loss": codebook, "commitment_loss": commitment}


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """-E[D(x_hat)]."""
    return -jnp.mean(fake_logits)


def non_saturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(x_hat)))]."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def non_saturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """E[-log sigmoid(D(x_hat))]."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


GAN_LOSSES = {
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
    "non_saturating": (non_saturating_discriminator_loss, non_saturating_generator_loss),
}


def adaptive_generator_weight(nll_grads: jax.Array, g_grads: jax.Array, *, max_weight: float = 1e4) -> jax.Array:
    """The VQGAN balance of the GAN term: ||grad nll|| / (||grad g|| + 1e-4), clipped, no gradient.

    Both gradients are taken with respect to the decoder's last layer (Esser et al. 2021, Eq. 7),
    so the GAN term never overwhelms the reconstruction term.
    """
    weight = jnp.linalg.norm(nll_grads) / (jnp.linalg.norm(g_grads) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def discriminator_factor(step: jax.Array, disc_start: int) -> jax.Array:
    """1 once ``step >= disc_start``, else 0: the GAN terms are off while reconstructions are poor."""
    return (step >= disc_start).astype(jnp.float32)


# ==== Weight anchor (Eq. 11) =====================================================================
#
# L_reg = sum over pretrained parameters of ||theta - theta_pretrained||^2. The rows that
# `mavilt_jax.models.embeddings.extend_embeddings` appends (image codes, specials) have no pretrained
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

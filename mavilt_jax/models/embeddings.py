"""Growing a pretrained LLM's embedding table and output head to the image-extended vocabulary.

Used when an imported or text-pretrained LLM starts stage 1 (image codes, then the specials of
`mavilt_jax.data.vocab.SPECIALS`) or text pretraining (the specials only). Shape legend: V0
pretrained rows, V = ``layout.size``, D hidden size, C codebook size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mavilt_jax.data.vocab import VocabLayout

EMBED_PATH = ("embed", "embedding")  # [V, D]
HEAD_PATH = ("lm_head", "kernel")  # [D, V]; absent when the embeddings are tied


def _new_rows(
    pretrained: jax.Array, num_new: int, rng: jax.Array, noise_scale: float, structure: jax.Array | None = None,
) -> jax.Array:
    """``num_new`` rows [num_new, D] near the average pretrained row [V0, D].

    row = mean + noise_scale * std * z, with mean and std per dimension over the pretrained rows.
    z ~ N(0, 1) by default; with ``structure`` [num_new, D] (a projected codebook) z is that
    structure standardised per dimension, so similar codes start from similar rows.
    """
    x = pretrained.astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0)
    if structure is None:
        z = jax.random.normal(rng, (num_new, x.shape[1]), np.float32)
    else:
        structure = structure.astype(np.float32)
        z = (structure - structure.mean(axis=0)) / (structure.std(axis=0) + 1e-6)
    return (mean + noise_scale * std * z).astype(pretrained.dtype)


def extend_embeddings(
    params: dict,
    layout: VocabLayout,
    old_vocab_size: int,
    rng: jax.Array,
    rule: str = "mean",
    *,
    noise_scale: float = 0.01,
    codebook: jax.Array | None = None,
) -> tuple[dict, int]:
    """Grows ``embed/embedding`` [V0, D] and ``lm_head/kernel`` [D, V0] to ``layout.size`` rows.

    The pretrained rows (and head columns) are kept exactly; the new ones, image codes then
    ``SPECIALS``, are initialised by ``rule``:

    - ``"mean"`` (default): mean of the pretrained rows plus noise scaled by their per-dimension
      standard deviation (``noise_scale`` = 0.01). A new token then starts as an "average" token:
      its output logit is close to the mean logit, so the pretrained next-token distribution over
      text barely moves (Hewitt, "Initializing new word embeddings", 2021; the default of
      transformers' ``resize_token_embeddings(mean_resizing=True)``), while the small noise breaks
      the tie between the new tokens.
    - ``"codebook"``: image-code rows from the VQ-GAN ``codebook`` [codebook_size, d] through a
      fixed random projection to D, rescaled like the noise above, so codes that are close in
      the codebook start close in the LLM; specials as in ``"mean"``.

    Pure jax, so it runs eagerly on loaded weights or traced inside an init function.
    ``params`` is the LLM's parameter dict (a top-level ``"params"`` collection is looked into).

    Returns:
      (new params, number of pretrained rows = old_vocab_size), the latter for `make_anchor`.
    """
    if rule not in ("mean", "codebook"):
        raise ValueError(f"rule={rule!r}; expected 'mean' or 'codebook'")
    if rule == "codebook" and codebook is None:
        raise ValueError("rule='codebook' needs the VQ-GAN codebook")
    if old_vocab_size != layout.text_vocab_size:
        raise ValueError(
            f"the pretrained table has {old_vocab_size} rows but the layout puts image codes at "
            f"{layout.image_offset}; build the vocab with text_vocab_size={old_vocab_size}"
        )
    if "params" in params and "embed" not in params:
        inner, count = extend_embeddings(params["params"], layout, old_vocab_size, rng, rule,
                                         noise_scale=noise_scale, codebook=codebook)
        return {**params, "params": inner}, count

    embedding = params[EMBED_PATH[0]][EMBED_PATH[1]]
    if embedding.shape[0] != old_vocab_size:
        raise ValueError(f"embed/embedding has {embedding.shape[0]} rows, expected old_vocab_size={old_vocab_size}")
    num_codes, num_specials = layout.codebook_size, layout.size - layout.special_offset
    rng_embed, rng_head, rng_proj = jax.random.split(rng, 3)

    def grow(table: jax.Array, rng: jax.Array, projection: jax.Array | None) -> jax.Array:  # table [V0, D]
        structure = None if projection is None else codebook.astype(np.float32) @ projection  # [C, D]
        rng_codes, rng_specials = jax.random.split(rng)
        code_rows = _new_rows(table, num_codes, rng_codes, noise_scale, structure)
        special_rows = _new_rows(table, num_specials, rng_specials, noise_scale)
        return jnp.concatenate([table, code_rows, special_rows], axis=0)

    projection = None
    if rule == "codebook":
        if codebook.shape[0] != num_codes:
            raise ValueError(f"codebook has {codebook.shape[0]} entries, the layout {num_codes}")
        projection = jax.random.normal(rng_proj, (codebook.shape[1], embedding.shape[1]), np.float32)

    new = dict(params)
    new[EMBED_PATH[0]] = {**params[EMBED_PATH[0]], EMBED_PATH[1]: grow(embedding, rng_embed, projection)}
    if HEAD_PATH[0] in params:
        kernel = params[HEAD_PATH[0]][HEAD_PATH[1]]  # [D, V0]
        if kernel.shape[1] != old_vocab_size:
            raise ValueError(f"lm_head/kernel has {kernel.shape[1]} columns, expected {old_vocab_size}")
        new[HEAD_PATH[0]] = {**params[HEAD_PATH[0]], HEAD_PATH[1]: grow(kernel.T, rng_head, projection).T}
    return new, old_vocab_size

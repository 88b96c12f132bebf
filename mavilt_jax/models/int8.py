"""Weight-only int8 for decoding: the parameter transform and the int8 embedding table.

`quantize_int8` turns f32/bf16 decoder parameters into int8 kernels with per-output-channel
scales; a decoder built with ``LLMConfig(weight_quant="int8")`` reads them (its projections
multiply by the int8 kernel cast to the compute dtype, then by the scale; `Int8Embed` serves the
table). A quarter of the f32 bytes per decode step; see `mavilt_jax.sampling.inference_params`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class Int8Embed(nn.Module):
    """``nn.Embed`` with an int8 table and a per-row scale ("embedding_scale" [V]), for `quantize_int8`.

    One scale per vocabulary row serves both uses of a tied table: the lookup (row * its scale)
    and the output projection (x @ table.T, each logit times its row's scale).
    """

    num_embeddings: int
    features: int
    dtype: Any
    param_dtype: Any
    embedding_init: Any

    def setup(self):
        axes = ("vocab", "embed")
        self.embedding = self.param("embedding", nn.with_logical_partitioning(nn.initializers.zeros, axes),
                                    (self.num_embeddings, self.features), jnp.int8)
        self.embedding_scale = self.param("embedding_scale", nn.with_logical_partitioning(nn.initializers.ones, axes[:1]),
                                          (self.num_embeddings,), jnp.float32)

    def __call__(self, tokens: Array) -> Array:
        return self.embedding[tokens].astype(self.dtype) * self.embedding_scale[tokens][..., None].astype(self.dtype)

    def attend(self, x: Array) -> Array:
        logits = jnp.einsum("...d,vd->...v", x, self.embedding.astype(self.dtype))
        return logits * self.embedding_scale.astype(self.dtype)


def quantize_int8(params: dict) -> dict:
    """Weight-only int8 copy of f32/bf16 params for a config with ``weight_quant="int8"``.

    Every matmul kernel becomes round(w / s) in int8 with s = max|w| / 127 per output channel
    (over the kernel's input axes: all but the last for [D, F] / [D, V], the first for q/k/v
    [D, N, H], the first two for o_proj [N, H, D]; a scanned leading layer axis is kept), stored
    beside it as "kernel_scale"; the embedding table gets one scale per row. Norm scales and
    biases stay as they are.
    """
    def quant(w, in_axes):
        w = jnp.asarray(w, jnp.float32)
        scale = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True) / 127.0
        scale = jnp.where(scale == 0, 1.0, scale)
        return jnp.round(w / scale).astype(jnp.int8), jnp.squeeze(scale, axis=in_axes)

    def walk(tree, path, lead):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out[key] = walk(value, path + (key,), lead or key == "layers")
            elif key == "kernel":
                n_in = 2 if path[-1] == "o_proj" else 1
                out["kernel"], out["kernel_scale"] = quant(value, tuple(range(lead, lead + n_in)))
            elif key == "embedding":
                out["embedding"], out["embedding_scale"] = quant(value, (1,))
            else:
                out[key] = value
        return out

    return walk(dict(params), (), 0)

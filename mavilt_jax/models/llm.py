"""The decoder-only LLM (Llama family: Llama 2/3, SmolLM, Qwen2) in Flax linen.

RMSNorm, rotary position embeddings (default, "linear", "dynamic" and "llama3" scaling as in
Hugging Face transformers), SwiGLU MLP, grouped-query attention, optional q/k/v biases (Qwen2) and
tied input/output embeddings. The same module serves text-only pretraining and the image-extended
vocabulary of MAViLT (Eq. 5-10): the vocabulary is just a larger ``vocab_size``.

Shape legend:
  B: batch            T: query length (tokens in this call)    S: key length (cache slots or T)
  N: query heads      K: key/value heads                      G: query heads per kv head (N // K)
  H: head dim         D: model dim (hidden_size)              F: MLP hidden (intermediate_size)
  V: vocabulary       L: layers

Parameter tree (``layers_{i}`` per layer, or one ``layers`` with a leading L axis when scanned):
  embed/embedding [V, D]; lm_head/kernel [D, V] (absent when tied); final_norm/scale [D];
  layers_i/{input_norm, post_attention_norm}/scale [D];
  layers_i/attn/{q_proj [D, N, H], k_proj [D, K, H], v_proj [D, K, H]}/kernel (+ bias [N|K, H]);
  layers_i/attn/o_proj/kernel [N, H, D];
  layers_i/mlp/{gate_proj, up_proj}/kernel [D, F]; layers_i/mlp/down_proj/kernel [F, D].
  With weight_quant="int8" (decoding, models/int8.py) every kernel is int8 beside a float32
  "kernel_scale" of its output shape, and the table is int8 beside "embedding_scale" [V].

Logical axis names, for the rule table that maps them to mesh axes:
  parameters:  "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers" (scanned only)
  activations: "act_batch", "act_len", "act_embed", "act_heads", "act_kv_heads", "act_head_dim",
               "act_mlp", "act_vocab"
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

from mavilt_jax.models.int8 import Int8Embed

Array = jax.Array
# The one value of a masked logit (attention here; sampling filters, constraints and beam scores in
# sampling.py). Finite, so a softmax over a fully masked row gives no NaN; far enough below any real
# logit that exp() of it is exactly 0 in float32 next to one unmasked entry; small enough that
# beam search can add several masked scores without overflowing to -inf (-0.7 * float32 max cannot).
MASKED_LOGIT = -1e30


def _written_out_backward(cfg: LLMConfig) -> bool:
    """Whether the projections take their written-out backward (`dense`, `swiglu_mlp`): asked for
    (``projection_vjp="explicit"``), float kernels (int8 ones are for decoding only), and no mesh in
    context or a mesh of one device. Over several devices autodiff's plain products are kept,
    which the partitioner shards as it always has."""
    mesh = jax.sharding.get_abstract_mesh()
    return cfg.projection_vjp == "explicit" and cfg.weight_quant != "int8" and (mesh.empty or mesh.size == 1)


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """`nn.with_logical_constraint`, minus mesh axes that do not divide a dimension.

    Constraining, say, 2 kv heads or a 50,182-row vocabulary over a tensor axis of 4 would make
    XLA copy the whole tensor to every device; such dimensions are left replicated instead (the
    rule `mavilt_jax.sharding.fit_spec` applies to parameters too). Without a mesh in context this
    is flax's own (a no-op outside a mesh).
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return nn.with_logical_constraint(x, names)
    from mavilt_jax import sharding  # Imported here: models stay importable without the trainer.

    spec = nn.logical_to_mesh_axes(names, rules)
    return jax.lax.with_sharding_constraint(x, sharding.fit_spec(spec, x.shape, mesh))


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Static description of the decoder; hashable, so it can be a static jit argument."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    # Hashable form of Hugging Face's rope_scaling dict, e.g. (("factor", 8.0), ("rope_type", "llama3"), ...).
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"  # "none" | "full" | "dots" | "dots_with_no_batch_dims"
    attention_impl: str = "xla"  # "xla" | "dot_product_attention"
    # "int8": weight-only int8 matmul kernels with per-output-channel scales (inference; models/int8.py).
    weight_quant: str = "none"
    # The projections' backward pass: "explicit" (written out in `dense` and `swiglu_mlp`; on one
    # device, see `_written_out_backward`) or "autodiff". Same gradients up to float rounding; the explicit
    # one trains 1.1-1.3x faster on CPU (benchmarks/train.py).
    projection_vjp: str = "explicit"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.remat not in _REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {sorted(_REMAT_POLICIES)}")
        if self.weight_quant not in ("none", "int8"):
            raise ValueError(f"weight_quant={self.weight_quant!r}; expected 'none' or 'int8'")
        if self.projection_vjp not in ("explicit", "autodiff"):
            raise ValueError(f"projection_vjp={self.projection_vjp!r}; expected 'explicit' or 'autodiff'")
        if self.attention_impl not in ("xla", "dot_product_attention"):
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected 'xla' or 'dot_product_attention'")
        if self.rope_type not in ("default", "linear", "dynamic", "llama3"):
            raise ValueError(f"unsupported rope scaling type {self.rope_type!r}")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def rope_type(self) -> str:
        d = self.rope_scaling_dict
        return d.get("rope_type", d.get("type", "default"))


_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@flax.struct.dataclass
class KVCache:
    """Explicit key/value cache of all layers.

    keys, values: [L, B, S, K, H]; end_index: int32 scalar, the number of slots already written
    (the same for every row: prompts are left-padded so all rows share slot indices).
    """

    keys: Array
    values: Array
    end_index: Array

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


def init_cache(config: LLMConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache of ``max_len`` slots for ``batch_size`` rows."""
    shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype), end_index=jnp.zeros((), jnp.int32))


# ---- rotary position embeddings --------------------------------------------------------------


def rope_inv_freq(config: LLMConfig) -> np.ndarray:
    """Inverse frequencies [H/2] (float32) with static scaling applied, as transformers computes them."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    params = config.rope_scaling_dict
    if config.rope_type == "linear":
        inv_freq = inv_freq / np.float32(params["factor"])
    elif config.rope_type == "llama3":
        factor = params["factor"]
        low_freq_factor, high_freq_factor = params["low_freq_factor"], params["high_freq_factor"]
        old_context_len = params["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def _dynamic_inv_freq(config: LLMConfig, positions: Array) -> Array:
    """NTK-aware "dynamic" scaling: the base grows once the longest position passes the trained length.

    Transformers recomputes the frequencies from max(position) + 1 of the call; this does the same,
    statelessly (so cached keys keep the frequencies they were written with).
    """
    dim = config.head_dim
    factor = config.rope_scaling_dict["factor"]
    seq_len = jnp.maximum(jnp.max(positions) + 1, config.max_position_embeddings).astype(jnp.float32)
    base = config.rope_theta * ((factor * seq_len / config.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    return 1.0 / (base**exponents)


def apply_rope(x: Array, positions: Array, inv_freq: Array, heads_major: bool = False) -> Array:
    """Rotates x [B, T, *, H] (``heads_major``: [B, *, T, H]) by positions [B, T], in the "rotate
    half" layout of transformers: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), halves of H."""
    freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B, T, H/2]
    freqs = freqs[:, None] if heads_major else freqs[:, :, None]  # a unit axis for the heads
    cos, sin = jnp.cos(freqs).astype(x.dtype), jnp.sin(freqs).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---- modules ---------------------------------------------------------------------------------


class Projection(nn.Module):
    """``nn.DenseGeneral`` with its kernel and bias created at their full N-D shape.

    DenseGeneral initialises a flat 2-D kernel and reshapes the box afterwards, so under a mesh the
    N-axis logical constraint lands on the 2-D array and fails. Here the box holds the N-D array
    from the start; the values are still drawn flat and reshaped, so parameters, names and shapes
    equal DenseGeneral's, and the product is the same ``lax.dot_general``.
    """

    features: tuple[int, ...]
    n_in: int  # trailing input axes contracted with the kernel's leading axes
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...] | None
    dtype: Any
    param_dtype: Any
    int8: bool = False  # kernel int8 + "kernel_scale" [features] (see models/int8.py)
    explicit_vjp: bool = False  # the product through `dense` (see `_written_out_backward`)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[x.ndim - self.n_in:]
        kernel_shape = in_shape + tuple(self.features)

        def flat_normal(rng, shape, dtype):
            flat = (math.prod(shape[: self.n_in]), math.prod(shape[self.n_in:]))
            return jnp.reshape(nn.initializers.normal(stddev=0.02)(rng, flat, dtype), shape)

        kernel_init = nn.with_logical_partitioning(flat_normal, self.kernel_axes)
        scale = None
        if self.int8:
            kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes),
                                kernel_shape, jnp.int8)
            scale = self.param("kernel_scale", nn.with_logical_partitioning(
                nn.initializers.ones, self.kernel_axes[self.n_in:]), tuple(self.features), jnp.float32)
        else:
            kernel = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        bias = None
        if self.bias_axes is not None:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.bias_axes),
                              tuple(self.features), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.explicit_vjp:
            lead = x.shape[:x.ndim - self.n_in]
            out = dense(x.reshape(lead + (-1,)), kernel.reshape(math.prod(in_shape), -1)).reshape(lead + tuple(self.features))
        else:
            contract = tuple(range(x.ndim - self.n_in, x.ndim))
            out = jax.lax.dot_general(x, kernel, ((contract, tuple(range(self.n_in))), ((), ())))
        if scale is not None:  # the int8 kernel's per-output-channel scale, applied after the product
            out = out * scale.astype(out.dtype)
        return out if bias is None else out + bias


class Kernel(nn.Module):
    """The "kernel" parameter of a 2-D `Projection` (same name, shape, axes and initial values),
    for code that does the product itself (`swiglu_mlp`)."""

    shape: tuple[int, int]
    axes: tuple[str, str]
    param_dtype: Any

    @nn.compact
    def __call__(self) -> Array:
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), self.axes)
        return self.param("kernel", init, self.shape, self.param_dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


CAUSAL_BLOCK = 128  # query block of `causal_attention` (chosen with benchmarks/attention_layouts.py)


def causal_attention(q: Array, k: Array, v: Array, scale: float, dtype: Any, block: int | None = None) -> Array:
    """Causal softmax attention within one call's tokens, heads-major: q [B, N, T, H], k, v [B, K, T, H]
    -> [B, N, T, H].

    Query block [start, end) attends to keys [0, end) only: the score blocks above the diagonal,
    all masked, are neither computed nor kept for the backward pass (about (1 + block / T) / 2 of
    the dense [T, T] work and memory). Every block's softmax still sees its whole row of keys, so
    the result is the dense masked softmax's. Heads-major because each block then reads its keys
    and values as a contiguous prefix of the T axis; in [B, T, K, H] every block transposed its own
    prefix again (attention fwd+bwd 1.2x faster at d_model 512, T 512: benchmarks/attention_layouts.py).
    """
    block = block or CAUSAL_BLOCK
    B, N, T, H = q.shape
    K = k.shape[1]
    qg = q.reshape(B, K, N // K, T, H)  # [B, K, G, T, H]
    outs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        logits = jnp.einsum("bkgth,bksh->bkgts", qg[:, :, :, start:end], k[:, :, :end]).astype(jnp.float32) * scale
        causal = np.arange(end)[None, :] <= np.arange(start, end)[:, None]  # [C, end], a constant
        probs = jax.nn.softmax(jnp.where(causal, logits, MASKED_LOGIT), axis=-1).astype(dtype)
        outs.append(jnp.einsum("bkgts,bksh->bkgth", probs, v[:, :, :end]))  # [B, K, G, C, H]
    return jnp.concatenate(outs, axis=3).reshape(B, N, T, H)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings and an optional KV cache.

    ``kv`` is this layer's (keys, values) [B, S, K, H] when ``cache_layer`` is None (scanned
    layers), or every layer's [L, B, S, K, H] with ``cache_layer`` the index of this one: the new
    tokens' keys/values are then written into the stacked cache itself, so a decode step moves
    B * T * K * H values per layer instead of copying the layer's whole cache (or all of it).
    """

    config: LLMConfig
    cache_layer: int | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, mask: Array | None, cache_index: Array | None,
                 kv: tuple[Array, Array] | None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        int8 = cfg.weight_quant == "int8"
        explicit = _written_out_backward(cfg)

        def proj(name, heads, head_axis):
            return Projection(
                (heads, H), 1, ("embed", head_axis, "head_dim"),
                (head_axis, "head_dim") if cfg.attention_bias else None, dtype, pdtype, int8, explicit, name=name,
            )(x)

        q = proj("q_proj", N, "heads")  # [B, T, N, H]
        k = proj("k_proj", K, "kv_heads")  # [B, T, K, H]
        v = proj("v_proj", K, "kv_heads")  # [B, T, K, H]
        q = constrain(q, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        k = constrain(k, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))

        if cfg.rope_type == "dynamic":
            inv_freq = _dynamic_inv_freq(cfg, positions)
        else:
            inv_freq = jnp.asarray(rope_inv_freq(cfg))
        scale = H**-0.5
        new_kv = None
        if kv is None and mask is None and cfg.attention_impl != "dot_product_attention":
            # Causal within this call (training, scoring): heads-major, see `causal_attention`.
            q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, N|K, T, H]
            q = apply_rope(q, positions, inv_freq, heads_major=True)
            k = apply_rope(k, positions, inv_freq, heads_major=True)
            out = jnp.swapaxes(causal_attention(q, k, v, scale, dtype), 1, 2)  # [B, T, N, H]
        else:
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
            if kv is not None:  # write this call's keys/values at slots [cache_index, cache_index + T)
                lead = () if self.cache_layer is None else (self.cache_layer,)  # stacked cache: this layer's index
                at = lead + (0, cache_index, 0, 0)
                new_kv = tuple(jax.lax.dynamic_update_slice(c, x.reshape((1,) * len(lead) + x.shape).astype(c.dtype), at)
                               for c, x in ((kv[0], k), (kv[1], v)))
                k, v = ((c[lead] if lead else c).astype(dtype) for c in new_kv)  # [B, S, K, H]
            if mask is None:
                out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)  # [B, T, N, H]
            elif cfg.attention_impl == "dot_product_attention":
                out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :], scale=scale)  # [B, T, N, H]
            else:
                B, T = q.shape[:2]
                qg = q.reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
                logits = jnp.einsum("btkgh,bskh->bkgts", qg, k).astype(jnp.float32) * scale  # [B, K, G, T, S]
                logits = jnp.where(mask[:, None, None, :, :], logits, MASKED_LOGIT)
                probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
                out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, T, N, H)  # [B, T, N, H]

        o_proj = Projection((x.shape[-1],), 2, ("heads", "head_dim", "embed"), None, dtype, pdtype, int8, explicit,
                            name="o_proj")
        out = o_proj(out)  # [B, T, D]
        return out, new_kv


def _tokens_last(a: Array) -> Array:
    """a [..., M] -> [M, tokens], the operand of a weight-gradient product, materialised on its own.

    The barrier keeps XLA from choosing the other operand's layout instead: left to itself,
    XLA:CPU writes the elementwise backward of the MLP in transposed order, one strided store per
    element, which cost more than the product.
    """
    return jax.lax.optimization_barrier(a.reshape(-1, a.shape[-1]).T)


def _weight_grad(a: Array, b: Array) -> Array:
    """a [..., M], b [..., N] -> a^T b [M, N], summed over every leading (token) axis.

    The narrower operand is the one transposed: XLA:CPU computes the other's elementwise producer
    (the MLP's silu(gate) * up for the down projection) inside the transposition, in strided order.
    """
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if a.shape[-1] <= b.shape[-1]:
        return _tokens_last(a) @ b
    return (_tokens_last(b) @ a).T  # [N, M] -> [M, N]: a transpose of the weight-sized result


@jax.custom_vjp
def dense(x: Array, w: Array) -> Array:
    """``x @ w`` ([..., K] x [K, N] -> [..., N]) with its backward pass written out: dx = dy w^T,
    dw = `_weight_grad` (x, dy)."""
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, dy):
    x, w = res
    return dy @ w.T, _weight_grad(x, dy)


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def swiglu_mlp(x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
    """SwiGLU, ``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` ([..., D] -> [..., D]), with its
    backward pass written out (`_swiglu_mlp_bwd`); the values and gradients are autodiff's."""
    return (nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def _swiglu_mlp_fwd(x, w_gate, w_up, w_down):
    gate, up = x @ w_gate, x @ w_up  # [..., F]
    h = nn.silu(gate) * up
    return h @ w_down, (x, w_gate, w_up, w_down, gate, up, h)


def _swiglu_mlp_bwd(res, dy):
    x, w_gate, w_up, w_down, gate, up, h = res
    sig = jax.nn.sigmoid(gate)
    dh = dy @ w_down.T  # [..., F]
    d_gate = dh * up * sig * (1 + gate * (1 - sig))  # silu'(g) = s (1 + g (1 - s))
    d_up = dh * gate * sig
    dx = d_gate @ w_gate.T + d_up @ w_up.T
    x_t = _tokens_last(x)  # [D, tokens], shared by the two products
    F = d_gate.shape[-1]
    return dx, x_t @ d_gate.reshape(-1, F), x_t @ d_up.reshape(-1, F), _weight_grad(h, dy)


swiglu_mlp.defvjp(_swiglu_mlp_fwd, _swiglu_mlp_bwd)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LLMConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        int8 = cfg.weight_quant == "int8"
        if _written_out_backward(cfg):
            return self._explicit(x, dtype, pdtype)
        proj = lambda feats, names, name: Projection(  # noqa: E731 (same kernel, name and init as nn.Dense)
            (feats,), 1, names, None, dtype, pdtype, int8, name=name)
        gate = proj(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x)  # [B, T, F]
        up = proj(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)  # [B, T, F]
        h = constrain(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
        return proj(x.shape[-1], ("mlp", "embed"), "down_proj")(h)  # [B, T, D]

    def _explicit(self, x: Array, dtype: Any, pdtype: Any) -> Array:
        """`swiglu_mlp` on the parameters of the Projections above (same names, shapes and draws)."""
        D, F = x.shape[-1], self.config.intermediate_size
        w = [Kernel((D, F), ("embed", "mlp"), pdtype, name="gate_proj")(),
             Kernel((D, F), ("embed", "mlp"), pdtype, name="up_proj")(),
             Kernel((F, D), ("mlp", "embed"), pdtype, name="down_proj")()]
        x, *w = promote_dtype(x, *w, dtype=dtype)
        return swiglu_mlp(x, *w)  # [B, T, D]


class DecoderLayer(nn.Module):
    """Pre-norm transformer block. Signature fits ``nn.scan``: (carry x, broadcast..., scanned kv).
    ``cache_layer``: see `Attention` (unscanned layers pass the stacked cache)."""

    config: LLMConfig
    cache_layer: int | None = None

    @nn.compact
    def __call__(self, x, positions, mask, cache_index, kv):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_norm")(x)
        attn_out, new_kv = Attention(cfg, self.cache_layer, name="attn")(h, positions, mask, cache_index, kv)
        x = x + attn_out
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_norm")(x)
        x = x + MLP(cfg, name="mlp")(h)
        x = constrain(x, ("act_batch", "act_len", "act_embed"))
        return x, new_kv


class Decoder(nn.Module):
    """Token ids -> next-token logits, with an optional explicit KV cache."""

    config: LLMConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, attention_mask: Array | None = None, cache: KVCache | None = None,
                 last_logits_only: bool = False):
        """Runs the decoder.

        Args:
          tokens: [B, T] int32 ids.
          positions: [B, T] int32 rotary positions.
          attention_mask: [B, T, S] bool, True where query t may attend key s; S = T without a cache,
            S = cache slots with one. None means causal over this call's tokens (and, with a cache,
            every slot written before them).
          cache: a `KVCache` or None; this call's keys/values go to slots [end_index, end_index + T).
          last_logits_only: logits of the last position only ([B, 1, V]): a prefill needs no more,
            and the output projection over a whole prompt costs as much as many decode steps.

        Returns:
          (logits [B, T, V] float32 (T = 1 with last_logits_only), the updated cache or None).
        """
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        T = tokens.shape[1]
        if attention_mask is None and cache is not None:
            slots = jnp.arange(cache.max_len)
            attention_mask = (slots[None, :] <= cache.end_index + jnp.arange(T)[:, None])[None]  # [1, T, S]
        if attention_mask is not None:  # None: causal within the call (`causal_attention`, no mask tensor)
            attention_mask = jnp.broadcast_to(attention_mask, (tokens.shape[0],) + attention_mask.shape[1:])

        embed_cls = Int8Embed if cfg.weight_quant == "int8" else nn.Embed
        embed = embed_cls(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype, name="embed",
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
        )
        x = embed(tokens)  # [B, T, D]
        x = constrain(x, ("act_batch", "act_len", "act_embed"))

        layer_cls = DecoderLayer
        policy = _REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers)
        cache_index = None if cache is None else cache.end_index
        if cfg.scan_layers:
            kv = None if cache is None else (cache.keys, cache.values)
            stack = nn.scan(
                layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            x, new_kv = stack(x, positions, attention_mask, cache_index, kv)
        else:
            # Every layer gets the stacked cache and writes its new keys/values into it in place
            # (slicing a layer out and writing it back copied the whole cache per layer: 6x slower
            # decoding at batch 16).
            new_kv = None if cache is None else (cache.keys, cache.values)
            for i in range(cfg.num_layers):
                x, new_kv = layer_cls(cfg, cache_layer=i, name=f"layers_{i}")(x, positions, attention_mask, cache_index,
                                                                                new_kv)

        if last_logits_only:
            x = x[:, -1:]
        x = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="final_norm")(x)
        if cfg.tie_embeddings and _written_out_backward(cfg):
            x, table = promote_dtype(x, embed.embedding, dtype=dtype)
            logits = dense(x, table.T)  # [B, T, V], as embed.attend
        elif cfg.tie_embeddings:
            logits = embed.attend(x)  # [B, T, V]
        else:
            logits = Projection((cfg.vocab_size,), 1, ("embed", "vocab"), None, dtype, pdtype,
                                cfg.weight_quant == "int8", _written_out_backward(cfg), name="lm_head")(x)  # [B, T, V]
        logits = constrain(logits.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))
        new_cache = None if cache is None else KVCache(keys=new_kv[0], values=new_kv[1], end_index=cache.end_index + T)
        return logits, new_cache


def init_params(config: LLMConfig, rng: Array) -> dict:
    """Random parameters (plain arrays, logical-axis boxes removed)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = Decoder(config).init(rng, tokens, tokens)
    return nn.unbox(variables["params"])


def param_logical_axes(config: LLMConfig) -> Any:
    """The logical axis names of every parameter (a tree of PartitionSpec), computed abstractly."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda r: Decoder(config).init(r, tokens, tokens), jax.random.key(0))
    return nn.get_partition_spec(abstract["params"])


def stack_layers(params: dict, num_layers: int) -> dict:
    """Per-layer parameters ``layers_{i}`` -> one ``layers`` tree with a leading L axis (for scan_layers)."""
    if "layers" in params:
        return params
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])
    return out


def unstack_layers(params: dict) -> dict:
    """Inverse of `stack_layers`."""
    if "layers" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out

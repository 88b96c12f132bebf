"""The VQ-GAN image tokenizer: a CXR becomes a grid of discrete codes and back (Eq. 4's x_hat).

Encoder and decoder are stacks of residual conv blocks with self-attention at the lowest
resolution (taming-transformers layout); the vector quantizer maps each latent vector to its
nearest codebook entry with straight-through gradients, optionally through a low-dimensional,
l2-normalised lookup space (ViT-VQGAN factorised codes), which keeps large codebooks in use.

Shape legend:
  B  batch
  H, W  image height and width (pixels)
  h, w  latent grid height and width (H / f, W / f; f = 2 ** (len(channel_multipliers) - 1))
  C  channels of a feature map
  D  latent dimension (``embedding_dim``)
  E  lookup dimension (``code_dim`` when factorised, else D)
  K  codebook size
Images are float32 in [-1, 1], shape [B, H, W, 1]; code ids are int32 [B, h * w], row-major.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mavilt_jax import checkpointing, losses


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Static hyper-parameters of the tokenizer (hashable, so it can be a static jit argument).

    Attributes:
      image_size: side of the square input images.
      image_channels: 1 for radiographs.
      base_channels: channels of the first encoder level.
      channel_multipliers: one entry per resolution level; each level after the first halves the
        resolution, so the downsampling factor is 2 ** (len - 1).
      num_res_blocks: residual blocks per level.
      attention: self-attention block at the lowest resolution (encoder and decoder).
      embedding_dim: D, the channels of the latent grid.
      codebook_size: K.
      code_dim: E; when set, lookup happens in a projected E-dim space with l2-normalised codes
        (factorised codes); ``None`` looks up directly in the D-dim latent space.
      commitment_cost: beta of the commitment term.
      norm_groups: GroupNorm groups (reduced automatically to divide the channel count).
    """

    image_size: int = 128
    image_channels: int = 1
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attention: bool = True
    embedding_dim: int = 256
    codebook_size: int = 1024
    code_dim: int | None = None
    commitment_cost: float = 0.25
    norm_groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    @property
    def codes_per_image(self) -> int:
        return self.latent_size**2


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """[B, h, w, C] -> [B, 2h, 2w, C], each value copied to a 2 x 2 block: the values of
    ``jax.image.resize(..., "nearest")`` at scale 2, as a broadcast whose gradient is a sum over
    the blocks (resize's is a scatter-add, slow on CPU: it ran in every L_recon backward)."""
    B, h, w, C = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (B, h, 2, w, 2, C)).reshape(B, 2 * h, 2 * w, C)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(channels, groups))


class ResBlock(nn.Module):
    channels: int
    norm_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.swish(_norm(x.shape[-1], self.norm_groups)(x))
        h = nn.Conv(self.channels, (3, 3))(h)
        h = nn.swish(_norm(self.channels, self.norm_groups)(h))
        h = nn.Conv(self.channels, (3, 3))(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1))(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions of the lowest-resolution map."""

    norm_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, h, w, C = x.shape
        y = _norm(C, self.norm_groups)(x).reshape(B, h * w, C)
        y = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=C, out_features=C)(y)
        return x + y.reshape(B, h, w, C)


class Encoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B,H,W,1] -> [B,h,w,D]
        cfg = self.config
        h = nn.Conv(cfg.base_channels, (3, 3))(x)
        for level, mult in enumerate(cfg.channel_multipliers):
            for _ in range(cfg.num_res_blocks):
                h = ResBlock(cfg.base_channels * mult, cfg.norm_groups)(h)
            if level < len(cfg.channel_multipliers) - 1:
                h = nn.Conv(h.shape[-1], (4, 4), strides=(2, 2))(h)
        h = ResBlock(h.shape[-1], cfg.norm_groups)(h)
        if cfg.attention:
            h = AttnBlock(cfg.norm_groups)(h)
        h = ResBlock(h.shape[-1], cfg.norm_groups)(h)
        h = nn.swish(_norm(h.shape[-1], cfg.norm_groups)(h))
        return nn.Conv(cfg.embedding_dim, (1, 1))(h)


class Decoder(nn.Module):
    """Latents -> image. ``conv_out`` is the last layer of the adaptive GAN weight."""

    config: VQGANConfig

    @nn.compact
    def __call__(self, z: jax.Array, return_penultimate: bool = False) -> Any:  # [B,h,w,D] -> [B,H,W,1]
        cfg = self.config
        mults = cfg.channel_multipliers[::-1]
        h = nn.Conv(cfg.base_channels * mults[0], (3, 3))(z)
        h = ResBlock(h.shape[-1], cfg.norm_groups)(h)
        if cfg.attention:
            h = AttnBlock(cfg.norm_groups)(h)
        h = ResBlock(h.shape[-1], cfg.norm_groups)(h)
        for level, mult in enumerate(mults):
            for _ in range(cfg.num_res_blocks):
                h = ResBlock(cfg.base_channels * mult, cfg.norm_groups)(h)
            if level < len(mults) - 1:
                h = upsample_nearest_2x(h)
                h = nn.Conv(h.shape[-1], (3, 3))(h)
        h = nn.swish(_norm(h.shape[-1], cfg.norm_groups)(h))
        out = nn.Conv(cfg.image_channels, (3, 3), name="conv_out")(h)
        return (out, h) if return_penultimate else out


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with straight-through gradients (van den Oord et al. 2017).

    With ``code_dim`` set, z is projected to E dims and both z and the codebook are l2-normalised
    before the lookup (ViT-VQGAN); the chosen code is projected back to D dims.
    """

    config: VQGANConfig

    def setup(self):
        cfg = self.config
        dim = cfg.code_dim or cfg.embedding_dim
        self.codebook = self.param(
            "codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), (cfg.codebook_size, dim)
        )
        if cfg.code_dim:
            self.proj_in = nn.Dense(cfg.code_dim)
            self.proj_out = nn.Dense(cfg.embedding_dim)

    def get_codebook(self) -> jax.Array:  # [K, E], as used by the lookup
        if self.config.code_dim:
            return _l2_normalize(self.codebook)
        return self.codebook

    def to_lookup_space(self, z: jax.Array) -> jax.Array:  # [..., D] -> [..., E]
        if self.config.code_dim:
            return _l2_normalize(self.proj_in(z))
        return z

    def from_lookup_space(self, e: jax.Array) -> jax.Array:  # [..., E] -> [..., D]
        return self.proj_out(e) if self.config.code_dim else e

    def nearest_codes(self, e: jax.Array) -> jax.Array:  # [..., E] -> [...] int32
        codebook = self.get_codebook()
        # ||e - c||^2 = ||e||^2 - 2 e.c + ||c||^2; ||e||^2 does not change the argmin.
        distances = jnp.sum(codebook**2, axis=-1) - 2.0 * jnp.einsum("...e,ke->...k", e, codebook)
        return jnp.argmin(distances, axis=-1).astype(jnp.int32)

    def lookup(self, codes: jax.Array) -> jax.Array:  # [...] -> [..., D]
        return self.from_lookup_space(jnp.take(self.get_codebook(), codes, axis=0))

    def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """z [B,h,w,D] -> (quantized [B,h,w,D], aux with codes [B,h,w], loss terms, perplexity)."""
        e = self.to_lookup_space(z)
        codes = self.nearest_codes(e)
        q = jnp.take(self.get_codebook(), codes, axis=0)
        vq, terms = losses.vq_loss(e, q, commitment_cost=self.config.commitment_cost)
        # Straight-through: forward uses q, backward passes the gradient to e unchanged.
        q_st = e + jax.lax.stop_gradient(q - e)
        quantized = self.from_lookup_space(q_st)
        one_hot = jax.nn.one_hot(codes.reshape(-1), self.config.codebook_size)
        probs = jnp.mean(one_hot, axis=0)
        perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
        aux = {
            "codes": codes,
            "vq_loss": vq,
            **terms,
            "perplexity": perplexity,
            "code_counts": jnp.sum(one_hot, axis=0),
            "lookup_latents": e.reshape(-1, e.shape[-1]),
        }
        return quantized, aux


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x**2, axis=-1, keepdims=True) + eps)


class VQGAN(nn.Module):
    """Encoder -> quantizer -> decoder.

    ``__call__(images)`` -> (reconstructions [B,H,W,1], aux); with ``return_penultimate`` also the
    decoder's input to ``conv_out`` (for the adaptive GAN weight), as aux["penultimate"].
    """

    config: VQGANConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.quantizer = VectorQuantizer(self.config)
        self.decoder = Decoder(self.config)

    def __call__(self, images: jax.Array, return_penultimate: bool = False):
        quantized, aux = self.quantizer(self.encoder(images))
        if return_penultimate:
            recon, aux["penultimate"] = self.decoder(quantized, return_penultimate=True)
        else:
            recon = self.decoder(quantized)
        return recon, aux

    def encode(self, images: jax.Array) -> jax.Array:  # [B,H,W,1] -> [B, h*w]
        e = self.quantizer.to_lookup_space(self.encoder(images))
        codes = self.quantizer.nearest_codes(e)
        return codes.reshape(codes.shape[0], -1)

    def decode(self, ids: jax.Array) -> jax.Array:  # [B, h*w] -> [B,H,W,1]
        side = math.isqrt(ids.shape[-1])
        quantized = self.quantizer.lookup(ids.reshape(ids.shape[0], side, side))
        return self.decoder(quantized)

    def decode_latents(self, quantized: jax.Array) -> jax.Array:  # [B,h,w,D] -> [B,H,W,1]
        return self.decoder(quantized)

    def lookup(self, ids: jax.Array) -> jax.Array:  # [B, h*w] -> [B,h,w,D]
        side = math.isqrt(ids.shape[-1])
        return self.quantizer.lookup(ids.reshape(ids.shape[0], side, side))

    def get_codebook(self) -> jax.Array:  # [K, E]
        return self.quantizer.get_codebook()

    def decoder_codebook(self) -> jax.Array:  # [K, D]: each code as the decoder receives it
        return self.quantizer.from_lookup_space(self.quantizer.get_codebook())


def to_model_range(images: Any, size: int | None = None) -> Any:
    """uint8 radiographs [..., R, R, 1] -> float32 in [-1, 1], resized to ``size`` (numpy, host).

    Bilinear resizing (PIL) when ``size`` differs from R, so one tokenizer reads any resolution.
    """
    import numpy as np
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if size is not None and images.shape[-2] != size:
        flat = images.reshape((-1,) + images.shape[-3:])
        flat = np.stack(
            [np.asarray(Image.fromarray(im[..., 0]).resize((size, size), Image.BILINEAR))[..., None] for im in flat]
        )
        images = flat.reshape(images.shape[:-3] + flat.shape[-3:])
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: Any) -> Any:
    """float images in [-1, 1] -> uint8 [0, 255] (numpy, host), clipping what falls outside."""
    import numpy as np

    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def vqgan_config(model: Mapping[str, Any]) -> VQGANConfig:
    """The frozen `VQGANConfig` of a ``config.model`` block or its JSON (lists become tuples)."""
    model = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    fields = {f.name for f in dataclasses.fields(VQGANConfig)}
    values = {k: v for k, v in model.items() if k in fields}
    values["channel_multipliers"] = tuple(values["channel_multipliers"])
    return VQGANConfig(**values)


def load_vqgan(workdir: str) -> tuple[VQGANConfig, Any]:
    """(VQGANConfig, params) of a trained VQ-GAN from its training workdir (or its checkpoints/ folder).

    Use with ``VQGAN(cfg).apply({"params": params}, images, method="encode")`` / ``"decode"``.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"VQ-GAN checkpoint directory {workdir!r} does not exist")
    cfg = vqgan_config(checkpointing.read_workdir_config(workdir)["model"])
    return cfg, checkpointing.load_subtree(workdir, "params")

"""phi: a CXR classifier on the 14 CheXpert observations, the feature extractor of Eq. 4.

Trained once on labelled radiographs, then loaded frozen: its intermediate activations give the
feature term of the clinical reconstruction loss, its pooled embedding the Frechet distance of
reconstructions (rFID on phi), and a second, independently trained variant (other seed and
architecture) measures whether findings survive tokenization without being the network the
tokenizer was optimised against.

Two architectures:
  "resnet": pre-activation residual blocks, GroupNorm, one strided conv per stage.
  "plain":  a plain CNN (conv-relu-conv-relu, max pooling), no normalisation or shortcuts.

Shape legend:
  B  batch;  H, W  image side;  C_i  channels of stage i;  F  embedding size (last stage's C);
  L  number of observations (14)
Images are float32 in [-1, 1], [B, H, W, 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mavilt_jax import checkpointing
from mavilt_jax.data import labels


@dataclasses.dataclass(frozen=True)
class CxrEncoderConfig:
    arch: str = "resnet"  # "resnet" | "plain"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    num_classes: int = labels.NUM_OBSERVATIONS
    norm_groups: int = 16

    def __post_init__(self):
        if self.arch not in ("resnet", "plain"):
            raise ValueError(f"unknown CXR encoder arch {self.arch!r}; expected 'resnet' or 'plain'")


class _ResidualStage(nn.Module):
    channels: int
    norm_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B,H,W,C] -> [B,H/2,W/2,C_i]
        groups = math.gcd(self.channels, self.norm_groups)
        x = nn.Conv(self.channels, (3, 3), strides=(2, 2))(x)
        for _ in range(2):
            h = nn.relu(nn.GroupNorm(num_groups=groups)(x))
            h = nn.Conv(self.channels, (3, 3))(h)
            h = nn.relu(nn.GroupNorm(num_groups=groups)(h))
            h = nn.Conv(self.channels, (3, 3))(h)
            x = x + h
        return x


class _PlainStage(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B,H,W,C] -> [B,H/2,W/2,C_i]
        x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
        x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2))


class CxrEncoder(nn.Module):
    """``__call__`` -> logits [B, L]; ``features`` -> per-stage activations; ``embed`` -> [B, F]."""

    config: CxrEncoderConfig

    def setup(self):
        cfg = self.config
        if cfg.arch == "resnet":
            self.stages = [_ResidualStage(w, cfg.norm_groups) for w in cfg.widths]
        else:
            self.stages = [_PlainStage(w) for w in cfg.widths]
        self.head = nn.Dense(cfg.num_classes)

    def features(self, x: jax.Array) -> list[jax.Array]:  # [B,H,W,1] -> [[B,H/2^i,W/2^i,C_i]]
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def embed(self, x: jax.Array) -> jax.Array:  # [B,H,W,1] -> [B,F]
        return jnp.mean(self.features(x)[-1], axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:  # [B,H,W,1] -> [B,L]
        return self.head(self.embed(x))

    def outputs(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array], jax.Array]:
        """(logits [B,L], features, embedding [B,F]) from one forward pass."""
        feats = self.features(x)
        emb = jnp.mean(feats[-1], axis=(1, 2))
        return self.head(emb), feats, emb


def cxr_encoder_config(model: Mapping[str, Any]) -> CxrEncoderConfig:
    """The frozen `CxrEncoderConfig` of a ``config.model`` block or its JSON."""
    return CxrEncoderConfig(arch=model["arch"], widths=tuple(model["widths"]), norm_groups=model.get("norm_groups", 16))


def load_cxr_encoder(workdir: str) -> tuple[CxrEncoderConfig, Any]:
    """(config, params) of a trained phi from its workdir, for frozen use (Eq. 4, evaluation).

    The image side it was trained at is ``checkpointing.read_workdir_config(workdir)["model"]["image_size"]``.
    """
    cfg = cxr_encoder_config(checkpointing.read_workdir_config(workdir)["model"])
    return cfg, checkpointing.load_subtree(workdir, "params")

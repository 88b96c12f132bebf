"""PatchGAN discriminator (Isola et al. 2017) for the adversarial term of the tokenizer loss.

Shape legend:
  B  batch;  H, W  image side;  P  patch-grid side (about H / 2 ** num_layers)
Input images [B, H, W, 1] in [-1, 1]; output one real/fake logit per overlapping patch [B, P, P, 1].
GroupNorm replaces pix2pix's BatchNorm so that the discriminator carries no batch statistics.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """base_channels: channels of the first layer; num_layers: strided layers after the first."""

    base_channels: int = 64
    num_layers: int = 3
    norm_groups: int = 32


class PatchDiscriminator(nn.Module):
    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B,H,W,1] -> [B,P,P,1]
        cfg = self.config
        h = nn.leaky_relu(nn.Conv(cfg.base_channels, (4, 4), strides=(2, 2))(x), 0.2)
        for n in range(1, cfg.num_layers + 1):
            channels = cfg.base_channels * min(2**n, 8)
            stride = 2 if n < cfg.num_layers else 1
            h = nn.Conv(channels, (4, 4), strides=(stride, stride), use_bias=False)(h)
            h = nn.GroupNorm(num_groups=math.gcd(channels, cfg.norm_groups))(h)
            h = nn.leaky_relu(h, 0.2)
        return nn.Conv(1, (4, 4))(h)

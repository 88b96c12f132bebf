"""Deprecated: the VQ-GAN stage is `mavilt_jax.stages.vqgan` (``VQGANStage``); its loader is
`mavilt_jax.models.vqgan.load_vqgan`. Kept so old imports and workdirs keep working."""

from __future__ import annotations

from typing import Any

from mavilt_jax.deprecation import moved_module
from mavilt_jax.models import vqgan as _vqgan
from mavilt_jax.stages.vqgan import VQGANStage, model_config  # noqa: F401

moved_module(__name__, "mavilt_jax.stages.vqgan")

TokenizerStage = VQGANStage


def load_tokenizer(checkpoint_dir: str) -> tuple[_vqgan.VQGANConfig, Any]:
    """Deprecated name of `mavilt_jax.models.vqgan.load_vqgan`."""
    return _vqgan.load_vqgan(checkpoint_dir)

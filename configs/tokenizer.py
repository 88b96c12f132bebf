"""Deprecated name of `configs/vqgan.py` (the VQ-GAN stage), kept for existing commands:

  python -m mavilt_jax.main --config=configs/tokenizer.py:runlocal,phi=DIR --workdir=DIR

gives the same config as ``configs/vqgan.py`` (stage "vqgan").
"""

from __future__ import annotations

import warnings

import ml_collections

from configs.vqgan import config  # noqa: F401


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    warnings.warn("configs/tokenizer.py is now configs/vqgan.py", DeprecationWarning, stacklevel=2)
    from configs import vqgan

    return vqgan.get_config(arg)

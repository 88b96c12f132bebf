"""phi: the CXR classifier on the 14 CheXpert observations (Eq. 4's feature extractor).

  python -m mavilt_jax.main --config=configs/cxr_encoder.py:runlocal --workdir=/tmp/mavilt/cxr_encoder

Variants: ``runlocal`` (CPU, 64 px, small widths); ``res=128``; ``independent`` (the second,
independently trained network used only for measuring finding preservation: plain CNN, other
seed); ``arch=plain|resnet``; ``steps=N``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common


def config(*, runlocal: bool = False, res: int | None = None, independent: bool = False, arch: str = "resnet",
           steps: int | None = None, **overrides: Any) -> ml_collections.ConfigDict:
    """The stage config; ``overrides`` set fields by path (``**{"optimizer.learning_rate": 1e-3}``)."""
    config = common.base_config(stage="cxr_encoder")
    res = res or (64 if runlocal else 256)
    config.data = common.data_config("synthetic_cxr", "r64" if res <= 64 else "r128")
    config.total_steps = 5_000
    config.batch_size = 64
    config.optimizer = common.optimizer_config(learning_rate=1e-3, warmup_steps=200)
    config.model = ml_collections.ConfigDict(dict(
        image_size=res, arch="plain" if independent else arch, widths=(32, 64, 128, 256), norm_groups=16))
    config.absent_as_negative = True
    config.augment_shift = 4
    config.seed = 1 if independent else 0
    config.sample_every_steps = 1000

    if runlocal:
        config = common.runlocal(config)
        config.batch_size = 16
        config.total_steps = 300
        config.optimizer.update(learning_rate=2e-3, warmup_steps=20)
        config.model.widths = (16, 32, 64, 64)
        config.model.norm_groups = 8
        config.sample_every_steps = 0
    if steps is not None:
        config.total_steps = steps
    return common.override(config, overrides)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

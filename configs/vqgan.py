"""The VQ-GAN image tokenizer with the clinical information-preserving loss (Eq. 4).

  python -m mavilt_jax.main --config=configs/vqgan.py:runlocal,phi=/tmp/mavilt/cxr_encoder --workdir=/tmp/mavilt/vqgan

Variants (comma-separated): ``runlocal`` (CPU, 64 px, tiny channels); ``res=128``; ``phi=DIR`` (the
trained CXR encoder workdir, needed when lambda_feat > 0); ``clinical=False`` (the ablation:
lambda_grad = lambda_feat = 0, plain L1 + VQ + GAN); ``steps=N``; ``codebook=K``;
``decoder_of=DIR`` (decoder tuning: start from the VQ-GAN trained in DIR, keep its encoder and
codebook, hence its codes, and train the decoder again without the feature term; with ``feat=W``
the term stays at W and ``phi=`` must name DIR's phi); ``feat=W`` (lambda_feat).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common


def config(*, runlocal: bool = False, res: int | None = None, phi: str = "", clinical: bool = True,
           steps: int | None = None, codebook: int | None = None, decoder_of: str = "", feat: float | None = None,
           **overrides: Any) -> ml_collections.ConfigDict:
    """The stage config; ``overrides`` set fields by path (``**{"loss.disc_start": 50}``)."""
    config = common.base_config(stage="vqgan")
    res = res or (64 if runlocal else 256)
    config.data = common.data_config("synthetic_cxr", "r64" if res <= 64 else "r128")
    config.total_steps = 50_000
    config.batch_size = 32
    config.optimizer = common.optimizer_config(learning_rate=2e-4, warmup_steps=500)
    config.optimizer.b1, config.optimizer.b2 = 0.5, 0.9  # the usual VQGAN Adam betas
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 0.0
    config.disc_optimizer = ml_collections.ConfigDict(dict(learning_rate=2e-4, b1=0.5, b2=0.9))

    config.model = ml_collections.ConfigDict(dict(
        image_size=res, image_channels=1, base_channels=64, channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks=2, attention=True, embedding_dim=256, codebook_size=1024, code_dim=32,
        commitment_cost=0.25, norm_groups=32,
    ))
    config.discriminator = ml_collections.ConfigDict(dict(base_channels=64, num_layers=3, norm_groups=32))
    config.loss = ml_collections.ConfigDict(dict(
        lambda_grad=1.0, lambda_feat=0.1, gan_weight=0.1, gan_loss="hinge", disc_start=10_000,
        max_adaptive_weight=1e4,
    ))
    config.quantizer_restart = ml_collections.ConfigDict(dict(every=200, threshold=0.03, decay=0.99))
    config.phi = ml_collections.ConfigDict(dict(checkpoint=phi, allow_random=False))
    config.num_samples = 8

    if runlocal:
        config = common.runlocal(config)
        config.batch_size = 8
        config.total_steps = 300
        # Only the schedule changes: the VQGAN betas and no weight decay / clipping set above stay.
        config.optimizer.update(learning_rate=1e-3, warmup_steps=20)
        config.disc_optimizer.learning_rate = 1e-3
        config.model.update(base_channels=16, channel_multipliers=(1, 2, 2, 4), num_res_blocks=1,
                            embedding_dim=32, codebook_size=256, code_dim=8, norm_groups=8)
        config.discriminator.update(base_channels=16, num_layers=2, norm_groups=8)
        config.loss.disc_start = 200
        config.quantizer_restart.every = 20
        config.quantizer_restart.threshold = 0.01
        config.eval_every_steps = 100
        config.checkpoint.every_steps = 100
        config.disable_most_optimizations = False
    if not clinical:
        config.loss.lambda_grad = 0.0
        config.loss.lambda_feat = 0.0
    elif not phi:
        # No trained phi given: the feature term cannot be computed, keep the gradient term only.
        config.loss.lambda_feat = 0.0
    if decoder_of:
        # The codes are those of `decoder_of`: its encoder and codebook get no updates and no
        # restarts. Its discriminator continues (`VQGANStage.continue_from`), so the GAN term is on
        # from the first step.
        config.init_from = decoder_of
        config.optimizer.freeze_patterns = (r"^encoder/", r"^quantizer/(codebook$|proj_in/)")
        config.quantizer_restart.every = 0
        config.loss.disc_start = 0
        # What the codes carry is set; the feature term would now only pull the drawing away from
        # the radiographs' look (reconstruction FD in the judge's features: 308 with it at 0.1, 57
        # at 0.01, 24 without, after 300 steps on a VQ-GAN trained with a 3,000-step phi).
        config.loss.lambda_feat = 0.0
        if phi and not feat:
            raise ValueError("decoder_of: phi= is used only with the feature term (feat=W > 0); the frozen phi "
                             "is then the one decoder_of was trained with")
    if feat is not None:
        config.loss.lambda_feat = float(feat)
    if steps is not None:
        config.total_steps = steps
    if codebook is not None:
        config.model.codebook_size = codebook
    return common.override(config, overrides)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

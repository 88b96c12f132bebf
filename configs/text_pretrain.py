"""Text pretraining of the LLM on report text (synthetic reports, plus IU X-ray when given).

  python -m mavilt_jax.main --config=configs/text_pretrain.py:runlocal --workdir=/tmp/mavilt/text_pretrain

Variants: ``runlocal`` (CPU minutes); ``model=cpu|tiny|smollm2|1b|7b`` (smollm2 continues the
imported SmolLM2-135M with its own tokenizer); ``iu=PATH`` (indiana_reports.csv); ``steps=N``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common


def config(*, runlocal: bool = False, model: str = "cpu", iu: str = "", steps: int | None = None,
           **overrides: Any) -> ml_collections.ConfigDict:
    """The stage config; ``overrides`` set fields by path (``**{"optimizer.learning_rate": 1e-3}``)."""
    config = common.base_config(stage="text_pretrain")
    config.model = common.llm_config(model)
    config.text = ml_collections.ConfigDict(dict(
        num_synthetic=20_000, synthetic_seed=0, bpe_vocab_size=2048, iu_reports_csv=iu,
        validation_fraction=0.05))
    config.sequence = ml_collections.ConfigDict(dict(max_len=160))
    config.loss = ml_collections.ConfigDict(dict(lambda_reg=0.0, lambda_recon=0.0))
    config.total_steps = 20_000
    config.batch_size = 64
    config.optimizer = common.optimizer_config(learning_rate=1e-3, warmup_steps=500)
    config.eval_every_steps = 1000
    config.eval_max_batches = 20
    config.num_samples = 4  # sample reports / images written at the end and every sample_every_steps

    if runlocal:
        config = common.runlocal(config)
        config.text.num_synthetic = 1500
        config.text.bpe_vocab_size = 512
        config.sequence.max_len = 128
        config.batch_size = 16
        config.total_steps = 300
        config.optimizer.update(learning_rate=3e-3, warmup_steps=30)
        config.eval_every_steps = 100
    if steps is not None:
        config.total_steps = steps
    return common.override(config, overrides)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config(**common.variants(config, arg))

"""TFDS builder of pre-tokenized studies (`pretokenized`): VQ-GAN codes beside report, labels, VQA."""

from tfds_builders.pretokenized.pretokenized_dataset_builder import (
    BatchEncoder,
    Builder,
    Pretokenized,
    PretokenizedConfig,
    make_config,
)

__all__ = ["BatchEncoder", "Builder", "Pretokenized", "PretokenizedConfig", "make_config"]

"""`synthetic_cxr`: synthetic frontal chest radiographs with reports, CheXpert labels and VQA.

Every example is generated offline by `mavilt_jax.data.phantoms.generate_study(seed, index)`;
nothing is downloaded. Each split draws from its own seed, so splits never share a study, and a
config fixes resolution and split sizes, so a build is reproducible bit for bit.

Stored as array_record (random access for `tfds.data_source` + grain) with PNG images, which TFDS
writes without running TensorFlow.

  builder = SyntheticCxr(config="r128", data_dir=...)
  builder.download_and_prepare()
  source = tfds.data_source("synthetic_cxr/r128", data_dir=..., split="train")
"""

from __future__ import annotations

import dataclasses
import functools
import io
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data import phantoms

# Seed of each split's synthetic world (offset by the config's seed), so splits are disjoint.
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class SyntheticCxrConfig(tfds.core.BuilderConfig):
    """Resolution and split sizes of one build."""

    resolution: int = 128
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 200
    seed: int = 0
    num_workers: int = 0  # generator processes; 0: one per CPU core, at most 8

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]


def _config(name: str, resolution: int, sizes: tuple[int, int, int]) -> SyntheticCxrConfig:
    train, validation, test = sizes
    return SyntheticCxrConfig(
        name=name, resolution=resolution, num_train=train, num_validation=validation, num_test=test,
        description=f"{resolution} px, {train}/{validation}/{test} train/validation/test studies.")


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
    """Synthetic chest radiographs with reports, CheXpert labels and VQA pairs."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Film-like exposure and proportions; rib fracture and widened mediastinum findings.",
    }
    BUILDER_CONFIGS = [
        _config("r32_tiny", 32, (16, 4, 4)),
        _config("r64_small", 64, (256, 32, 32)),
        _config("r64", 64, (2000, 200, 200)),
        # The same validation and test studies as r64 (each split has its own seed), ten times the
        # training studies (the main job's stages 1-2 and the readers fitted on the training split).
        _config("r64_large", 64, (20000, 200, 200)),
        _config("r128_small", 128, (256, 32, 32)),
        _config("r128", 128, (2000, 200, 200)),
        _config("r256_small", 256, (256, 32, 32)),
        _config("r256", 256, (2000, 200, 200)),
    ]
    DEFAULT_CONFIG_NAME = "r128"

    # TFDS locates a builder's source through `importlib_resources`, an optional package it does
    # not install; this module's own path is the same answer without it.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(r, r, 1), encoding_format="png"),
                "study_id": tfds.features.Text(),
                "findings": tfds.features.Text(),
                "impression": tfds.features.Text(),
                "labels": tfds.features.Tensor(shape=(labels_lib.NUM_OBSERVATIONS,), dtype=np.int8),
                "attributes": tfds.features.Text(),
                "view": tfds.features.Text(),
                "vqa": tfds.features.Sequence({
                    "question": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                    "answer_type": tfds.features.Text(),
                    "question_type": tfds.features.Text(),
                }),
            }),
            supervised_keys=None,
            homepage=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is generated
        return {split: self._generate_examples(split) for split in SPLIT_SEEDS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        seed = cfg.seed * len(SPLIT_SEEDS) + SPLIT_SEEDS[split]
        n = cfg.split_size(split)
        make = functools.partial(keyed_example, seed, resolution=cfg.resolution)
        workers = cfg.num_workers or min(8, os.cpu_count() or 1)
        if workers <= 1 or n < 64:
            yield from map(make, range(n))
            return
        # Spawned (not forked) workers: the parent may already run JAX or TensorFlow threads.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap(make, range(n), chunksize=16)


def keyed_example(seed: int, index: int, resolution: int) -> tuple[str, dict]:
    """(key, TFDS example) of study ``index`` of the world ``seed``."""
    study = phantoms.generate_study(seed, index, resolution)
    return study["study_id"], to_example(study)


def to_example(study: dict) -> dict:
    """A `generate_study` dict -> a TFDS example (image as PNG bytes, lists as sequences)."""
    buf = io.BytesIO()
    Image.fromarray(study["image"]).save(buf, format="PNG")
    vqa = study["vqa"]
    return {
        "image": buf.getvalue(),
        "study_id": study["study_id"],
        "findings": study["findings"],
        "impression": study["impression"],
        "labels": np.asarray(study["labels"], np.int8),
        "attributes": study["attributes"],
        "view": study["view"],
        "vqa": {k: [q[k] for q in vqa] for k in ("question", "answer", "answer_type", "question_type")},
    }


# The name `tfds build` looks for in a `*_dataset_builder.py` module.
Builder = SyntheticCxr

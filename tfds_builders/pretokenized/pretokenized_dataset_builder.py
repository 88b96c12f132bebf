"""`pretokenized`: each study's VQ-GAN codes beside its report, labels and VQA pairs.

Multimodal training reads code ids instead of pixels, so the frozen tokenizer runs once per
image here rather than once per epoch. Encoding happens in fixed-size jitted batches (the last one
padded), so the encoder compiles once. A config names the source dataset and the tokenizer
checkpoint; since the checkpoint is a local path, configs are made with `make_config`:

  from tfds_builders.pretokenized import Pretokenized, make_config
  config = make_config("r64_tok", tokenizer_checkpoint="/tmp/mavilt/vqgan",
                       source_name="synthetic_cxr", source_config="r64")
  builder = Pretokenized(config=config, data_dir=DATA_DIR)
  builder.download_and_prepare()
  source = builder.as_data_source(split="train")   # examples with "codes" int32 [h * w]

Examples whose image cannot be decoded are skipped and counted (logged per split).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mavilt_jax.data import labels as labels_lib

_TEXT_FIELDS = ("study_id", "findings", "impression", "view")
_VQA_FIELDS = ("question", "answer", "answer_type", "question_type")


@dataclasses.dataclass(eq=False)
class PretokenizedConfig(tfds.core.BuilderConfig):
    """Which dataset to encode with which tokenizer.

    source_name / source_config / source_data_dir: the TFDS source (read with
      `mavilt_jax.data.pipeline.load_source`).
    tokenizer_checkpoint: a VQ-GAN training workdir (`mavilt_jax.models.vqgan.load_vqgan`).
    splits: the source splits to encode.
    batch_size: images per jitted encoder call.
    """

    source_name: str = "synthetic_cxr"
    source_config: str | None = "r64"
    source_data_dir: str | None = None
    tokenizer_checkpoint: str = ""
    splits: tuple[str, ...] = ("train", "validation", "test")
    batch_size: int = 64


def make_config(name: str, *, tokenizer_checkpoint: str, source_name: str = "synthetic_cxr",
                source_config: str | None = "r64", source_data_dir: str | None = None,
                splits: tuple[str, ...] = ("train", "validation", "test"), batch_size: int = 64) -> PretokenizedConfig:
    return PretokenizedConfig(
        name=name, tokenizer_checkpoint=tokenizer_checkpoint, source_name=source_name, source_config=source_config,
        source_data_dir=source_data_dir, splits=tuple(splits), batch_size=batch_size,
        description=f"{source_name}/{source_config} encoded with the tokenizer in {tokenizer_checkpoint}.")


class Pretokenized(tfds.core.GeneratorBasedBuilder):
    """VQ-GAN codes + report + labels + VQA of a source dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [PretokenizedConfig(name="default", description="Pass a config made by make_config().")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _tokenizer_config(self):
        from mavilt_jax import checkpointing
        from mavilt_jax.models import vqgan

        path = self.builder_config.tokenizer_checkpoint
        if not path:
            raise ValueError("pretokenized: the config needs tokenizer_checkpoint (use make_config)")
        return vqgan.vqgan_config(checkpointing.read_workdir_config(path)["model"])

    def _info(self) -> tfds.core.DatasetInfo:
        codes_per_image = self._tokenizer_config().codes_per_image
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "codes": tfds.features.Tensor(shape=(codes_per_image,), dtype=np.int32),
                **{k: tfds.features.Text() for k in _TEXT_FIELDS},
                "labels": tfds.features.Tensor(shape=(labels_lib.NUM_OBSERVATIONS,), dtype=np.int8),
                "vqa": tfds.features.Sequence({k: tfds.features.Text() for k in _VQA_FIELDS}),
            }),
            supervised_keys=None,
            homepage=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is local
        return {split: self._generate_examples(split) for split in self.builder_config.splits}

    def _generate_examples(self, split: str):
        from mavilt_jax.data import pipeline

        cfg = self.builder_config
        source = pipeline.load_source(cfg.source_name, split, data_dir=cfg.source_data_dir,
                                      builder_config=cfg.source_config)
        encoder = BatchEncoder(cfg.tokenizer_checkpoint, cfg.batch_size)
        skipped = 0
        pending: list[tuple[np.ndarray, dict]] = []
        for index in range(len(source)):
            try:
                example = source[index]
                image = np.asarray(example["image"])
            except Exception as e:  # a corrupt record or image: skip it, count it, keep the rest
                skipped += 1
                logging.warning("pretokenized/%s: skipping record %d (%s)", split, index, e)
                continue
            pending.append((image, example))
            if len(pending) == cfg.batch_size:
                yield from self._emit(encoder, pending)
                pending = []
        if pending:
            yield from self._emit(encoder, pending)
        logging.info("pretokenized/%s: %d examples encoded, %d skipped", split, len(source) - skipped, skipped)

    def _emit(self, encoder: BatchEncoder, pending: list[tuple[np.ndarray, dict]]):
        codes = encoder(np.stack([image for image, _ in pending]))
        for row, (_, example) in zip(codes, pending):
            out = {k: _text(example.get(k, "")) for k in _TEXT_FIELDS}
            labels = example.get("labels")
            out["labels"] = (np.asarray(labels, np.int8) if labels is not None
                             else np.full(labels_lib.NUM_OBSERVATIONS, labels_lib.ABSENT, np.int8))
            vqa = example.get("vqa") or {}
            out["vqa"] = {k: [_text(v) for v in np.asarray(vqa.get(k, []), dtype=object).reshape(-1)] for k in _VQA_FIELDS}
            out["codes"] = row
            yield out["study_id"], out


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class BatchEncoder:
    """uint8 images [N, R, R, 1] -> codes int32 [N, h*w] in fixed-size jitted batches."""

    def __init__(self, tokenizer_checkpoint: str, batch_size: int):
        import jax

        from mavilt_jax.models import vqgan

        self.config, self.params = vqgan.load_vqgan(tokenizer_checkpoint)
        self.batch_size = batch_size
        model = vqgan.VQGAN(self.config)
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
        self._to_model_range = vqgan.to_model_range

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        x = self._to_model_range(images, self.config.image_size)
        out = []
        for start in range(0, n, self.batch_size):
            chunk = x[start : start + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:  # pad to the one compiled shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(np.asarray(self._encode(self.params, chunk))[: self.batch_size - pad])
        return np.concatenate(out).astype(np.int32)


# The name `tfds build` looks for in a `*_dataset_builder.py` module.
Builder = Pretokenized

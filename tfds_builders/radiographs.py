"""What the builders of real radiograph collections (IU X-ray, MIMIC-CXR-JPG) share: reading and
encoding radiographs, their feature set, and skipping bad files with counts instead of failing."""

from __future__ import annotations

import collections
import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from mavilt_jax.data import labels as labels_lib


class SkipCounter(collections.Counter):
    """Studies skipped during a build, by reason; logged once per build stage."""

    def log(self, dataset: str, stage: str, kept: int) -> None:
        if self:
            details = ", ".join(f"{reason}={count}" for reason, count in sorted(self.items()))
            logging.warning("%s, %s: kept %d studies, skipped %d (%s).", dataset, stage, kept, sum(self.values()), details)
        else:
            logging.info("%s, %s: kept %d studies, skipped none.", dataset, stage, kept)


def drop_missing_images(studies: dict[str, list[dict]], skipped: SkipCounter) -> dict[str, list[dict]]:
    """Drops (and counts) studies whose image file does not exist, before the splits are written:
    TFDS cannot write a split that ends up empty, so a split with no images must not be declared."""
    kept: dict[str, list[dict]] = {}
    for split, items in studies.items():
        kept[split] = [s for s in items if epath.Path(s["image_path"]).exists()]
        if len(kept[split]) < len(items):
            skipped["missing_image"] += len(items) - len(kept[split])
    return kept


def read_radiograph(path: epath.PathLike, resolution: int) -> np.ndarray:
    """Reads an image file as a grayscale uint8 [R, R, 1] radiograph.

    The image is center-cropped to a square (keeps the pixel aspect ratio and adds no borders) and
    resized with an antialiasing filter. 16-bit images are min-max scaled to 8 bits.

    Raises:
      OSError, SyntaxError, ValueError: missing, unreadable or truncated file (PIL's errors).
    """
    with epath.Path(path).open("rb") as f:
        image = Image.open(io.BytesIO(f.read()))
        if image.format == "JPEG":
            image.draft("L", (resolution, resolution))  # decode JPEGs at a reduced scale: faster
        image.load()  # decodes fully now, so a truncated file raises here
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, np.float64)
        lo, hi = pixels.min(), pixels.max()
        pixels = (pixels - lo) / max(hi - lo, 1e-9) * 255.0
        image = Image.fromarray(np.round(pixels).astype(np.uint8))
    else:
        image = image.convert("L")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8)[:, :, None]


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [R, R, 1] -> PNG bytes (TFDS stores them as given, without TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def image_features(resolution: int) -> dict[str, Any]:
    """The features shared with synthetic_cxr where they apply."""
    return {
        "image": tfds.features.Image(shape=(resolution, resolution, 1), encoding_format="png"),
        "study_id": tfds.features.Text(),
        "image_id": tfds.features.Text(),
        "findings": tfds.features.Text(),
        "impression": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(labels_lib.NUM_OBSERVATIONS,), dtype=np.int8),
        "view": tfds.features.Text(),
    }


def radiograph_examples(studies: list[dict], resolution: int, dataset: str, split: str) -> Iterator[tuple[str, dict]]:
    """(key, example) for each study whose image decodes; unreadable or truncated images are skipped
    and counted (logged once for the split), so one bad file never stops a build."""
    skipped = SkipCounter()
    kept = 0
    for study in studies:
        path = epath.Path(study["image_path"])
        try:
            pixels = read_radiograph(path, resolution)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            skipped["unreadable_image"] += 1
            logging.info("Skipping unreadable image %s: %s", path, e)
            continue
        kept += 1
        yield study["study_id"], {
            "image": encode_png(pixels),
            "study_id": study["study_id"],
            "image_id": study["image_id"],
            "findings": study["findings"],
            "impression": study["impression"],
            "labels": study["labels"],
            "view": study["view"],
        }
    skipped.log(dataset, f"{split} images", kept)


class RadiographBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders of real radiograph collections: array_record files, the shared
    features, and the skip-and-count example loop. Subclasses set ``HOMEPAGE`` and write
    ``_split_generators`` (so this class stays abstract and is not registered by TFDS)."""

    HOMEPAGE: str = ""

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # Read through tfds.data_source + grain, which need array_record files.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(image_features(self.builder_config.resolution)),
            supervised_keys=None,
            homepage=self.HOMEPAGE,
        )

    def _generate_examples(self, studies: list[dict], split: str):
        yield from radiograph_examples(studies, self.builder_config.resolution, self.name, split)

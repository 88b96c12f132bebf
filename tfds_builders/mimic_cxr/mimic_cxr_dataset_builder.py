"""MIMIC-CXR-JPG 2.x with the MIMIC-CXR report texts, from local files.

One example per study: one frontal image (the config's views in order of preference, PA before
AP by default; among equals the smallest dicom_id), grayscale PNG center-cropped and resized to the
config's resolution; the report's findings and impression (`mavilt_jax.data.reports`: header
variants, de-identification "___" as the shared "XXXX" token); CheXpert labels from
``mimic-cxr-2.0.0-chexpert.csv.gz`` (1, 0, -1, blank -> -2; all -2 when the study has no row);
the ViewPosition as ``view``. Splits are the official ones (train / validate / test ->
train / validation / test).

A missing, unreadable or truncated image, a missing report file, a report without findings and
impression, or a study without an image in the wanted views is skipped and counted; the counts per
reason are logged as warnings (report, view and file checks once, image decoding per split).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data import reports
from tfds_builders import radiographs
from tfds_builders.radiographs import (
    SkipCounter,
    drop_missing_images,
)

_OFFICIAL_SPLITS = {"train": "train", "validate": "validation", "test": "test"}


@dataclasses.dataclass
class MimicCxrConfig(tfds.core.BuilderConfig):
    """resolution: side of the square image; views: ViewPositions kept, in order of preference;
    deid: the de-identification rule of `mavilt_jax.data.reports` ("token", "remove", "keep")."""

    resolution: int = 256
    views: tuple[str, ...] = ("PA", "AP")
    deid: str = reports.DEFAULT_DEID


def _read_table(manual_dir: epath.Path, name: str) -> list[dict[str, str]]:
    """Rows of ``name``.csv.gz (as distributed) or an uncompressed ``name``.csv."""
    for candidate in (manual_dir / f"{name}.csv.gz", manual_dir / f"{name}.csv"):
        if candidate.exists():
            data = candidate.read_bytes()
            text = gzip.decompress(data).decode() if candidate.suffix == ".gz" else data.decode()
            return list(csv.DictReader(io.StringIO(text, newline="")))
    raise FileNotFoundError(f"{name}.csv.gz not found in {manual_dir}; see the manual download instructions.")


def _chexpert_labels(row: dict[str, str] | None) -> np.ndarray:
    out = np.full((labels_lib.NUM_OBSERVATIONS,), labels_lib.ABSENT, np.int8)
    if row is None:
        return out
    for name, index in labels_lib.INDEX.items():
        value = (row.get(name) or "").strip()
        if not value:
            continue  # blank: not mentioned
        try:
            state = int(float(value))
        except ValueError:
            state = None
        if state not in (labels_lib.POSITIVE, labels_lib.NEGATIVE, labels_lib.UNCERTAIN):
            raise ValueError(f"Unexpected CheXpert value {value!r} for {name} in study {row.get('study_id')}.")
        out[index] = state
    return out


class MimicCxr(radiographs.RadiographBuilder):
    """MIMIC-CXR-JPG frontal radiographs with report sections and CheXpert labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MIMIC-CXR-JPG 2.x layout, official split, PA/AP view, CheXpert labels."}
    BUILDER_CONFIGS = [
        MimicCxrConfig(name="r256", resolution=256, description="PA preferred over AP, 256x256."),
        MimicCxrConfig(name="r128", resolution=128, description="PA preferred over AP, 128x128."),
        MimicCxrConfig(name="r512", resolution=512, description="PA preferred over AP, 512x512."),
        MimicCxrConfig(name="pa_r256", resolution=256, views=("PA",), description="PA only, 256x256."),
    ]
    DEFAULT_CONFIG_NAME = "r256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MIMIC-CXR needs credentialed PhysioNet access (https://physionet.org/content/mimic-cxr-jpg/).
    Place in `manual_dir`:
      manual_dir/mimic-cxr-2.0.0-split.csv.gz
      manual_dir/mimic-cxr-2.0.0-metadata.csv.gz
      manual_dir/mimic-cxr-2.0.0-chexpert.csv.gz
      manual_dir/files/p10/p10000032/s50414267/<dicom_id>.jpg ...     (MIMIC-CXR-JPG images)
      manual_dir/files/p10/p10000032/s50414267.txt ...                (report texts from
                                                                       mimic-cxr-reports.zip; may
                                                                       also live under
                                                                       manual_dir/mimic-cxr-reports/files/)
    """

    HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = epath.Path(dl_manager.manual_dir)
        split_rows = _read_table(manual_dir, "mimic-cxr-2.0.0-split")
        view_of = {row["dicom_id"]: row["ViewPosition"].strip() for row in _read_table(manual_dir, "mimic-cxr-2.0.0-metadata")}
        chexpert = {row["study_id"]: row for row in _read_table(manual_dir, "mimic-cxr-2.0.0-chexpert")}

        # study -> (subject, split, [dicom ids])
        dicoms: dict[str, list[str]] = collections.defaultdict(list)
        study_info: dict[str, tuple[str, str]] = {}
        for row in split_rows:
            dicoms[row["study_id"]].append(row["dicom_id"])
            study_info[row["study_id"]] = (row["subject_id"], _OFFICIAL_SPLITS[row["split"].strip()])

        skipped = SkipCounter()
        studies: dict[str, list[dict]] = {split: [] for split in _OFFICIAL_SPLITS.values()}
        preference = {view: rank for rank, view in enumerate(self.builder_config.views)}
        for study_id in sorted(dicoms, key=int):
            subject_id, split = study_info[study_id]
            candidates = sorted((preference[view_of[d]], d) for d in dicoms[study_id] if view_of.get(d) in preference)
            if not candidates:
                skipped["no_frontal_view"] += 1
                continue
            dicom_id = candidates[0][1]
            relative = epath.Path("files") / f"p{subject_id[:2]}" / f"p{subject_id}"
            report_path = self._find_report(manual_dir, relative / f"s{study_id}.txt")
            if report_path is None:
                skipped["missing_report"] += 1
                continue
            sections = reports.parse_mimic_report(report_path.read_text(), deid=self.builder_config.deid)
            if not sections.usable:
                skipped["no_report_text"] += 1
                continue
            studies[split].append(
                dict(
                    study_id=study_id,
                    image_id=dicom_id,
                    image_path=manual_dir / relative / f"s{study_id}" / f"{dicom_id}.jpg",
                    findings=sections.findings,
                    impression=sections.impression,
                    labels=_chexpert_labels(chexpert.get(study_id)),
                    view=view_of[dicom_id],
                )
            )
        studies = drop_missing_images(studies, skipped)
        skipped.log(self.name, "reports, views and image files (all splits)", sum(map(len, studies.values())))
        if not any(studies.values()):
            raise ValueError(f"No usable study in {manual_dir} (skipped: {dict(skipped)}).")
        return {split: self._generate_examples(items, split) for split, items in studies.items() if items}

    @staticmethod
    def _find_report(manual_dir: epath.Path, relative: epath.Path) -> epath.Path | None:
        for root in (manual_dir, manual_dir / "mimic-cxr-reports"):
            if (root / relative).exists():
                return root / relative
        return None


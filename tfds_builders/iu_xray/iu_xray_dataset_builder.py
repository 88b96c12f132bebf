"""IU X-ray (Indiana University chest X-ray collection, Open-i) from local files.

One example per study: its frontal radiograph (grayscale PNG, center-cropped to a square and
resized to the config's resolution), its report's findings and impression (cleaned by
`mavilt_jax.data.reports`, de-identification placeholders as one "XXXX" token), CheXpert labels
from the collection's MeSH indexing (`reports.labels_from_mesh`; all ABSENT = -2 when no MeSH is
available), and the view.

Two local layouts are read (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``):
- Open-i: ``NLMCXR_png/<image id>.png`` and the report XMLs (``ecgen-radiology/<uid>.xml`` or
  ``NLMCXR_reports.tgz`` as downloaded). A report names its images with ``parentImage`` ids;
  images sharing an id prefix (``CXR1_1_IM-0001``-4001, -3001) form one study, with that prefix as
  ``study_id`` (the study id R2Gen uses). The frontal image is the first one that
  ``indiana_projections.csv`` calls Frontal; without that file, the first image of the study
  (view "unknown"). Studies with lateral images only are skipped, except in the r2gen configs,
  which keep R2Gen's studies exactly (first image, view "Lateral").
- R2Gen: ``annotation.json`` ({train, val, test}: [{id, report, image_path, split}]) and
  ``images/<study>/<n>.png``; image 0 is the frontal one. The report text there is the findings;
  with ``indiana_reports.csv`` beside it, impression and MeSH labels are added from it.

Splits: "r2gen" configs use the study split of R2Gen (Chen et al., 2020) that most IU X-ray
report-generation papers report on (from ``annotation.json``, or ``r2gen_split.csv`` with columns
study_id,split,image_paths in the Open-i layout); "all" configs keep every usable study and split
by a hash of the report uid (70/10/20), so one report never lands in two splits.

A missing, unreadable or truncated image, or a report without findings and impression, is
skipped and counted; the counts per reason are logged as warnings (report, view and file checks
once for the build, image decoding once per split).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import logging
import re
import tarfile
import zlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data import reports
from tfds_builders import radiographs
from tfds_builders.radiographs import SkipCounter, drop_missing_images

_R2GEN_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class IuXrayConfig(tfds.core.BuilderConfig):
    """resolution: side of the square image; split: "r2gen" (R2Gen's study split) or "all";
    require_frontal: skip studies whose images are all lateral (Open-i layout with projections).
    The r2gen configs keep them (their first image, view "Lateral") so that the split has exactly
    the studies papers evaluate on. deid: the de-identification rule of
    `mavilt_jax.data.reports` ("token", "remove" or "keep")."""

    resolution: int = 256
    split: str = "r2gen"
    require_frontal: bool = True
    deid: str = reports.DEFAULT_DEID


def _image_key(name: str) -> str:
    """The "IM-..." part of an image id or projection file name (from "IM-" on)."""
    start = name.find("IM-")
    return name[start:] if start >= 0 else name


def _hash_split(key: str) -> str:
    bucket = zlib.crc32(key.encode()) % 10
    return "train" if bucket < 7 else "validation" if bucket < 8 else "test"


def _study_prefix(image_id: str) -> str:
    """"CXR1_1_IM-0001-4001" -> "CXR1_1_IM-0001" (the study id R2Gen uses)."""
    return re.sub(r"-\d+$", "", image_id)


def _read_csv(path: epath.Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(), newline="")))


def _iter_report_xmls(manual_dir: epath.Path) -> Iterator[tuple[str, bytes]]:
    """(name, xml bytes) of the Open-i report XMLs, from ``ecgen-radiology/`` or the tgz."""
    xml_dir = manual_dir / "ecgen-radiology"
    if xml_dir.is_dir():
        for path in sorted(xml_dir.glob("*.xml")):
            yield path.name, path.read_bytes()
        return
    tgz = manual_dir / "NLMCXR_reports.tgz"
    with tgz.open("rb") as f, tarfile.open(fileobj=f) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.endswith(".xml"):
                yield member.name, tar.extractfile(member).read()


class IuXray(radiographs.RadiographBuilder):
    """IU X-ray chest radiographs with their reports and MeSH-derived CheXpert labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Open-i and R2Gen layouts; frontal view; R2Gen or hash split."}
    BUILDER_CONFIGS = [
        IuXrayConfig(name=f"r2gen_r{r}", resolution=r, split="r2gen", require_frontal=False,
                     description=f"R2Gen split (2069/296/590 studies), {r}x{r}.")
        for r in (256, 128, 512)
    ] + [
        IuXrayConfig(name="all_r256", resolution=256, split="all", description="All studies, 70/10/20 by uid hash."),
        IuXrayConfig(name="all_r128", resolution=128, split="all", description="All studies, 70/10/20 by uid hash."),
    ]
    DEFAULT_CONFIG_NAME = "r2gen_r256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Place the IU X-ray collection in `manual_dir` in one of two layouts.

    Open-i layout (https://openi.nlm.nih.gov/faq, "Indiana University chest X-ray collection"):
      manual_dir/NLMCXR_png/CXR1_1_IM-0001-4001.png ...    (from NLMCXR_png.tgz)
      manual_dir/ecgen-radiology/1.xml ...                  (or NLMCXR_reports.tgz itself)
      manual_dir/indiana_projections.csv                    (optional: uid,filename,projection;
                                                             picks the frontal image)
      manual_dir/r2gen_split.csv                            (needed by the r2gen_* configs:
                                                             study_id,split,image_paths)

    R2Gen layout (the iu_xray folder of https://github.com/zhjohnchan/R2Gen):
      manual_dir/annotation.json
      manual_dir/images/CXR2384_IM-0942/0.png ...
      manual_dir/indiana_reports.csv                        (optional: impression and labels)

    The collection is licensed CC BY-NC-ND 4.0 (Demner-Fushman et al., JAMIA 2016).
    """

    HOMEPAGE = "https://openi.nlm.nih.gov/faq"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = epath.Path(dl_manager.manual_dir)
        skipped = SkipCounter()
        if (manual_dir / "annotation.json").exists():
            studies = self._r2gen_layout_studies(manual_dir, skipped)
        else:
            studies = self._openi_layout_studies(manual_dir, skipped)
        studies = drop_missing_images(studies, skipped)
        skipped.log(self.name, "reports, views and image files (all splits)", sum(map(len, studies.values())))
        if not any(studies.values()):
            raise ValueError(f"No usable study in {manual_dir} (skipped: {dict(skipped)}).")
        # TFDS cannot write an empty split (e.g. a small "all" build whose test bucket is empty).
        return {split: self._generate_examples(studies[split], split) for split in _SPLITS if studies[split]}

    # ---- layouts -> lists of studies per split ----------------------------------------------------

    def _openi_layout_studies(self, manual_dir: epath.Path, skipped: SkipCounter) -> dict[str, list[dict]]:
        if not ((manual_dir / "ecgen-radiology").is_dir() or (manual_dir / "NLMCXR_reports.tgz").exists()):
            raise FileNotFoundError(
                f"No IU X-ray files in {manual_dir}: expected annotation.json (R2Gen layout) or "
                f"ecgen-radiology/ / NLMCXR_reports.tgz (Open-i layout).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        # (uid, "IM-..." part) -> projection: the CSV's file names drop part of some image ids
        # ("1_IM-0001-4001.dcm.png" is parentImage "CXR1_1_IM-0001-4001").
        projections: dict[tuple[str, str], str] = {}
        if (manual_dir / "indiana_projections.csv").exists():
            for row in _read_csv(manual_dir / "indiana_projections.csv"):
                key = (row["uid"].strip(), _image_key(row["filename"].removesuffix(".png").removesuffix(".dcm")))
                projections[key] = row["projection"].strip()
        r2gen_split = self._r2gen_split_file(manual_dir)
        studies: dict[str, list[dict]] = {split: [] for split in _SPLITS}
        seen: set[str] = set()
        for name, xml in _iter_report_xmls(manual_dir):
            try:
                report = reports.parse_iu_xml(xml, deid=self.builder_config.deid)
            except ValueError:
                skipped["unreadable_report"] += 1
                logging.info("Unreadable report XML %s.", name)
                continue
            if not report.image_ids:
                skipped["report_without_images"] += 1
                continue
            if not report.sections.usable:
                skipped["no_report_text"] += 1
                continue
            groups: dict[str, list[str]] = collections.defaultdict(list)
            for image_id in report.image_ids:
                groups[_study_prefix(image_id)].append(image_id)
            for study_id, image_ids in groups.items():
                if r2gen_split is not None:
                    split = r2gen_split.get(study_id)
                    if split is None:
                        skipped["not_in_r2gen_split"] += 1
                        continue
                else:
                    split = _hash_split(report.uid)
                if study_id in seen:
                    skipped["duplicate_study"] += 1
                    continue
                views = [projections.get((report.uid, _image_key(i))) for i in image_ids]
                if any(views):
                    frontal = [i for i, v in zip(image_ids, views) if v == "Frontal"]
                    if frontal:
                        image_id, view = frontal[0], "Frontal"
                    elif self.builder_config.require_frontal:
                        skipped["no_frontal_view"] += 1
                        continue
                    else:
                        image_id, view = image_ids[0], views[0] or "unknown"
                else:
                    image_id, view = image_ids[0], "unknown"
                seen.add(study_id)
                studies[split].append(
                    dict(
                        study_id=study_id,
                        image_id=image_id,
                        image_path=manual_dir / "NLMCXR_png" / f"{image_id}.png",
                        findings=report.sections.findings,
                        impression=report.sections.impression,
                        labels=reports.labels_from_mesh(report.mesh_major),
                        view=view,
                    )
                )
        return studies

    def _r2gen_split_file(self, manual_dir: epath.Path) -> dict[str, str] | None:
        """study_id -> split from r2gen_split.csv for r2gen configs; None for "all" configs."""
        if self.builder_config.split == "all":
            return None
        path = manual_dir / "r2gen_split.csv"
        if not path.exists():
            raise FileNotFoundError(
                f"Config {self.builder_config.name} uses the R2Gen split, but {path} does not exist. "
                "Add it (columns study_id,split,image_paths) or use an all_* config."
            )
        return {row["study_id"]: _R2GEN_SPLITS[row["split"].strip()] for row in _read_csv(path)}

    def _r2gen_layout_studies(self, manual_dir: epath.Path, skipped: SkipCounter) -> dict[str, list[dict]]:
        annotation = json.loads((manual_dir / "annotation.json").read_text())
        csv_reports: dict[str, dict[str, str]] = {}
        if (manual_dir / "indiana_reports.csv").exists():
            csv_reports = {row["uid"]: row for row in _read_csv(manual_dir / "indiana_reports.csv")}
        studies: dict[str, list[dict]] = {split: [] for split in _SPLITS}
        for r2gen_split, entries in sorted(annotation.items()):
            for entry in entries:
                findings = reports.clean_text(entry.get("report"), self.builder_config.deid)
                uid_match = re.match(r"CXR(\d+)_", entry["id"])
                row = csv_reports.get(uid_match.group(1)) if uid_match else None
                impression = reports.clean_text(row["impression"], self.builder_config.deid) if row else ""
                if not (findings or impression):
                    skipped["no_report_text"] += 1
                    continue
                if not entry.get("image_path"):
                    skipped["report_without_images"] += 1
                    continue
                split = _R2GEN_SPLITS[r2gen_split] if self.builder_config.split == "r2gen" else _hash_split(entry["id"])
                labels = (
                    reports.labels_from_mesh(row["MeSH"].split(";"))
                    if row
                    else np.full((labels_lib.NUM_OBSERVATIONS,), labels_lib.ABSENT, np.int8)
                )
                studies[split].append(
                    dict(
                        study_id=entry["id"],
                        image_id=entry["image_path"][0].removesuffix(".png"),
                        image_path=manual_dir / "images" / entry["image_path"][0],
                        findings=findings,
                        impression=impression,
                        labels=labels,
                        view="Frontal",
                    )
                )
        return studies

    # ---- examples -------------------------------------------------------------------------------


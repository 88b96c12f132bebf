"""The MIMIC-CXR-JPG builder on a tiny tree in the official layout with planted bad files."""

from __future__ import annotations

import gzip
import logging
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from fixtures import cxr_layouts

from mavilt_jax.data import labels as L
from tfds_builders.mimic_cxr import MimicCxr, MimicCxrConfig
from tfds_builders.mimic_cxr.mimic_cxr_dataset_builder import _chexpert_labels

RES = 16


def _build(manual_dir, data_dir, views=("PA", "AP"), deid="token"):
    config = MimicCxrConfig(name=f"test_{'_'.join(views)}_{deid}_r{RES}", resolution=RES, views=views, deid=deid)
    builder = MimicCxr(config=config, data_dir=str(data_dir))
    # No file_format given: the builder defaults to array_record, which as_data_source needs.
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return {split: {e["study_id"].decode(): e for e in builder.as_data_source(split)} for split in builder.info.splits}


def _logged_skips(caplog) -> dict[str, int]:
    total: dict[str, int] = {}
    for record in caplog.records:
        if record.levelno == logging.WARNING and "skipped" in record.getMessage():
            for reason, count in re.findall(r"(\w+)=(\d+)", record.getMessage()):
                total[reason] = total.get(reason, 0) + int(count)
    return total


@pytest.mark.parametrize("reports_dir", ["files", "mimic-cxr-reports/files"])
def test_official_layout_gives_exactly_the_expected_examples(tmp_path, caplog, reports_dir):
    fixture = cxr_layouts.write_mimic(tmp_path / "manual", size=RES, reports_dir=reports_dir)
    with caplog.at_level(logging.INFO):
        got = _build(tmp_path / "manual", tmp_path / "data")
    assert sorted(got) == ["test", "train", "validation"]
    assert {s: sorted(e) for s, e in got.items()} == {
        s: sorted(k for k, v in fixture["studies"].items() if v["split"] == s) for s in got
    }
    for study_id, want in fixture["studies"].items():
        example = got[want["split"]][study_id]
        assert example["image_id"].decode() == want["image_id"]  # PA preferred, lateral never
        assert example["view"].decode() == want["view"]
        assert example["findings"].decode() == want["findings"]
        assert example["impression"].decode() == want["impression"]
        np.testing.assert_array_equal(example["labels"], want["labels"])
        assert example["image"].shape == (RES, RES, 1)
        # JPEG (quality 95) of a smooth image: close to the source pixels.
        diff = np.abs(example["image"][:, :, 0].astype(int) - want["source_pixels"].astype(int))
        assert diff.mean() < 3 and diff.max() < 25
    assert _logged_skips(caplog) == fixture["skipped"]
    # Hand check of the label encoding for study 53189527: effusion 1, atelectasis -1, PTX 0.
    lab = got["train"]["53189527"]["labels"]
    assert lab[L.INDEX["Pleural Effusion"]] == 1 and lab[L.INDEX["Atelectasis"]] == -1
    assert lab[L.INDEX["Pneumothorax"]] == 0 and (lab == L.ABSENT).sum() == 11


def test_pa_only_config_drops_ap_only_studies(tmp_path, caplog):
    fixture = cxr_layouts.write_mimic(tmp_path / "manual", size=RES)
    with caplog.at_level(logging.INFO):
        got = _build(tmp_path / "manual", tmp_path / "data", views=("PA",))
    kept = {k for split in got.values() for k in split}
    assert kept == {k for k, v in fixture["studies"].items() if v["view"] == "PA"}
    assert _logged_skips(caplog)["no_frontal_view"] == fixture["skipped"]["no_frontal_view"] + 1  # + AP-only study


def test_deid_rule_is_a_config_option(tmp_path):
    cxr_layouts.write_mimic(tmp_path / "manual", size=RES)
    got = _build(tmp_path / "manual", tmp_path / "data", deid="remove")
    assert got["train"]["53189527"]["impression"].decode() == "Effusion, possibly atelectasis. Dr. was told."


def test_missing_metadata_is_a_clear_error(tmp_path):
    cxr_layouts.write_mimic(tmp_path / "manual", size=RES)
    (tmp_path / "manual" / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="metadata"):
        _build(tmp_path / "manual", tmp_path / "data")


def test_chexpert_value_encoding():
    row = {name: "" for name in L.OBSERVATIONS}
    row.update({"Edema": "1.0", "Fracture": "0.0", "Pneumonia": "-1.0", "study_id": "5"})
    lab = _chexpert_labels(row)
    assert lab.dtype == np.int8
    want = np.full(14, -2, np.int8)
    want[[L.INDEX["Edema"], L.INDEX["Fracture"], L.INDEX["Pneumonia"]]] = [1, 0, -1]
    np.testing.assert_array_equal(lab, want)
    np.testing.assert_array_equal(_chexpert_labels(None), np.full(14, -2, np.int8))
    with pytest.raises(ValueError, match="CheXpert value"):
        _chexpert_labels({**row, "Edema": "2.0"})


def test_fixture_tables_are_gzip_csv(tmp_path):
    # The fixture writes what PhysioNet distributes: gzip-compressed CSV with the official headers.
    cxr_layouts.write_mimic(tmp_path, size=RES)
    header = gzip.open(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt").readline().strip()
    assert header == (
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
        "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
        "Pneumothorax,Support Devices"
    )

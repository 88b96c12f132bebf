"""The IU X-ray builder on tiny trees in the Open-i and R2Gen layouts with planted bad files."""

from __future__ import annotations

import csv
import logging
import re
import tarfile
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from fixtures import cxr_layouts
from PIL import Image

from mavilt_jax.data import labels as L
from mavilt_jax.data import pipeline, reports
from tfds_builders.iu_xray import IuXray, IuXrayConfig
from tfds_builders.radiographs import read_radiograph

RES = 16


def _build(manual_dir, data_dir, split_scheme="all", caplog=None, deid="token"):
    config = IuXrayConfig(name=f"test_{split_scheme}_{deid}_r{RES}", resolution=RES, split=split_scheme, deid=deid)
    builder = IuXray(config=config, data_dir=str(data_dir))
    with caplog.at_level(logging.INFO) if caplog else _nullcontext():
        builder.download_and_prepare(
            file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        )
    return {split: {e["study_id"].decode(): e for e in builder.as_data_source(split)} for split in ("train", "validation", "test")}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _logged_skips(caplog) -> dict[str, int]:
    """Sums the "reason=count" pairs of the builder's skip warnings over all splits."""
    total: dict[str, int] = {}
    for record in caplog.records:
        if record.levelno == logging.WARNING and "skipped" in record.getMessage():
            for reason, count in re.findall(r"(\w+)=(\d+)", record.getMessage()):
                total[reason] = total.get(reason, 0) + int(count)
    return total


def _expected_split(uid: str) -> str:
    bucket = zlib.crc32(uid.encode()) % 10
    return "train" if bucket < 7 else "validation" if bucket < 8 else "test"


@pytest.mark.parametrize("reports_as_tgz", [False, True])
def test_openi_layout_all_split(tmp_path, caplog, reports_as_tgz):
    fixture = cxr_layouts.write_iu_openi(tmp_path / "manual", reports_as_tgz=reports_as_tgz)
    got = _build(tmp_path / "manual", tmp_path / "data", "all", caplog)
    expected = fixture["studies"]
    assert sum(len(s) for s in got.values()) == len(expected) == 5
    for study_id, want in expected.items():
        split = _expected_split(want["uid"])
        example = got[split][study_id]
        assert example["image_id"].decode() == want["image_id"]  # the frontal one, not the first
        assert example["view"].decode() == "Frontal"
        assert example["findings"].decode() == want["findings"]
        assert example["impression"].decode() == want["impression"]
        np.testing.assert_array_equal(example["labels"], reports.labels_from_mesh(want["mesh"]))
        assert example["image"].shape == (RES, RES, 1) and example["image"].dtype == np.uint8
        # 20x16 source: the center 16x16 crop, unresized.
        np.testing.assert_array_equal(example["image"][:, :, 0], want["source_pixels"][:, 2:18])
    assert _logged_skips(caplog) == fixture["skipped"]
    # A few labels by hand: study 4 is an effusion with a catheter, study 1 normal.
    lab3 = got[_expected_split("4")]["CXR4_IM-2050"]["labels"]
    assert {L.OBSERVATIONS[i] for i in np.flatnonzero(lab3 == L.POSITIVE)} == {"Pleural Effusion", "Support Devices"}
    lab1 = got[_expected_split("1")]["CXR1_1_IM-0001"]["labels"]
    assert lab1[L.INDEX["No Finding"]] == L.POSITIVE and (lab1 == L.ABSENT).sum() == 13


def test_openi_layout_r2gen_split(tmp_path, caplog):
    fixture = cxr_layouts.write_iu_openi(tmp_path / "manual")
    got = _build(tmp_path / "manual", tmp_path / "data", "r2gen", caplog)
    usable = {s for s in fixture["r2gen"] if s in fixture["studies"]}
    want = {"train": set(), "validation": set(), "test": set()}
    for study_id in usable:
        want[{"val": "validation"}.get(fixture["r2gen"][study_id], fixture["r2gen"][study_id])].add(study_id)
    assert {split: set(examples) for split, examples in got.items()} == want
    skips = _logged_skips(caplog)
    assert skips["unreadable_image"] == 1  # only the truncated CXR3 is in the R2Gen split
    assert skips["not_in_r2gen_split"] == 4  # CXR5, CXR8, CXR9 and the second group of report 10


def test_openi_without_projections_takes_the_first_image(tmp_path, caplog):
    fixture = cxr_layouts.write_iu_openi(tmp_path / "manual", with_projections=False)
    got = _build(tmp_path / "manual", tmp_path / "data", "all", caplog)
    example = got[_expected_split("1")]["CXR1_1_IM-0001"]
    assert example["image_id"].decode() == "CXR1_1_IM-0001-3001" and example["view"].decode() == "unknown"
    # Without projections the lateral-only study 8 is kept (its first image is all there is).
    assert got[_expected_split("8")]["CXR8_IM-2333"]["image_id"].decode() == "CXR8_IM-2333-2001"
    assert len(fixture["studies"]) + 1 == sum(len(s) for s in got.values())


@pytest.mark.parametrize("with_reports_csv", [False, True])
def test_r2gen_layout(tmp_path, caplog, with_reports_csv):
    fixture = cxr_layouts.write_iu_r2gen(tmp_path / "manual", size=RES, with_reports_csv=with_reports_csv)
    got = _build(tmp_path / "manual", tmp_path / "data", "r2gen", caplog)
    assert sum(len(s) for s in got.values()) == len(fixture["studies"]) == 4
    for study_id, want in fixture["studies"].items():
        example = got[{"val": "validation"}.get(want["split"], want["split"])][study_id]
        assert example["findings"].decode() == want["findings"]
        assert example["impression"].decode() == want.get("impression", "")
        assert example["view"].decode() == "Frontal"
        np.testing.assert_array_equal(example["labels"], want.get("labels", np.full(14, L.ABSENT, np.int8)))
        np.testing.assert_array_equal(example["image"][:, :, 0], want["source_pixels"])
    assert _logged_skips(caplog) == fixture["skipped"]


def test_deid_rule_is_a_config_option(tmp_path):
    cxr_layouts.write_iu_openi(tmp_path / "manual")
    got = _build(tmp_path / "manual", tmp_path / "data", "all", deid="remove")
    example = got[_expected_split("1")]["CXR1_1_IM-0001"]
    assert example["findings"].decode() == "Heart size normal. No."
    assert example["impression"].decode() == "Normal chest x-."


def test_r2gen_config_without_split_file_is_a_clear_error(tmp_path):
    cxr_layouts.write_iu_openi(tmp_path / "manual", with_r2gen_split=False)
    with pytest.raises(FileNotFoundError, match="r2gen_split.csv"):
        _build(tmp_path / "manual", tmp_path / "data", "r2gen")


def test_manual_dir_without_iu_files_is_a_clear_error(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "README.txt").write_text("wrong folder")
    with pytest.raises(FileNotFoundError, match="annotation.json"):
        _build(tmp_path / "manual", tmp_path / "data", "all")


def test_load_source_builds_from_manual_dir_then_reads(tmp_path):
    cxr_layouts.write_iu_openi(tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        pipeline.load_source("iu_xray", "train", data_dir=str(tmp_path / "data"), builder_config="r2gen_r128")
    source = pipeline.load_source(
        "iu_xray", "train", data_dir=str(tmp_path / "data"), builder_config="r2gen_r128", manual_dir=str(tmp_path / "manual")
    )
    assert sorted(e["study_id"].decode() for e in source) == ["CXR10_IM-0002", "CXR1_1_IM-0001"]
    assert source[0]["image"].shape == (128, 128, 1)
    # The TFDS source feeds the grain pipeline: examples decode to numpy and batch.
    def preprocess(example, rng):
        return {"image": example["image"].astype(np.float32) / 255.0, "labels": example["labels"]}

    batch = next(iter(pipeline.make_train_dataset(source, preprocess, batch_size=2, seed=0, shard_index=0, shard_count=1)))
    assert batch["image"].shape == (2, 128, 128, 1) and batch["labels"].shape == (2, 14)
    evals = list(pipeline.make_eval_batches(source, lambda e: preprocess(e, None), batch_size=3))
    assert len(evals) == 1 and evals[0]["valid"].tolist() == [True, True, False]
    # Prepared now: a second call reads without manual_dir.
    again = pipeline.load_source("iu_xray", "test", data_dir=str(tmp_path / "data"), builder_config="r2gen_r128")
    assert [e["study_id"].decode() for e in again] == ["CXR4_IM-2050"]


def test_read_radiograph_modes(tmp_path):
    rgb = np.stack([cxr_layouts.radiograph(1, 8, 8)] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "rgb.png", 8)[:, :, 0], rgb[:, :, 0])
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 500)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    want = np.round((deep - 500) / (63 * 1000) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "deep.png", 8)[:, :, 0], want)
    # Portrait: the center square (rows 2..9 of 12).
    tall = cxr_layouts.radiograph(2, 8, 12)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "tall.png", 8)[:, :, 0], tall[2:10])


def test_real_radiograph_reads(shared_data):
    pixels = read_radiograph(shared_data / "real_cxr" / "CXR3_IM-1384-1001.png", 64)
    assert pixels.shape == (64, 64, 1) and pixels.dtype == np.uint8
    # A radiograph, not a blank: lungs darker than the mediastinum/spine column in the middle.
    assert pixels.std() > 20
    middle, sides = pixels[20:44, 28:36].mean(), np.concatenate([pixels[20:44, 10:20], pixels[20:44, 44:54]]).mean()
    assert middle > sides


def test_real_iu_reports_give_the_r2gen_split_exactly(shared_data, tmp_path, caplog):
    """The real report XMLs, projections and R2Gen split, with a blank 8x8 PNG for each image of
    R2Gen's test studies (the images are not in shared data): the build must hold exactly the 590
    test studies, and every train/validation study must be counted as a missing image."""
    manual = tmp_path / "manual"
    (manual / "NLMCXR_png").mkdir(parents=True)
    iu = shared_data / "iu_xray"
    for name in ("NLMCXR_reports.tgz", "indiana_projections.csv", "r2gen_split.csv"):
        (manual / name).symlink_to(iu / name)
    with open(iu / "r2gen_split.csv", newline="") as f:
        want = {"train": set(), "validation": set(), "test": set()}
        for row in csv.DictReader(f):
            want[{"val": "validation"}.get(row["split"], row["split"])].add(row["study_id"])
    assert [len(want[s]) for s in ("train", "validation", "test")] == [2069, 296, 590]
    blank = cxr_layouts.png_bytes(np.full((8, 8), 90, np.uint8))
    with tarfile.open(iu / "NLMCXR_reports.tgz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                for image_id in reports.parse_iu_xml(tar.extractfile(member).read()).image_ids:
                    if image_id.rsplit("-", 1)[0] in want["test"]:
                        (manual / "NLMCXR_png" / f"{image_id}.png").write_bytes(blank)
    config = IuXrayConfig(name="real_r2gen_r8", resolution=8, split="r2gen", require_frontal=False)
    builder = IuXray(config=config, data_dir=str(tmp_path / "data"))
    with caplog.at_level(logging.INFO):
        builder.download_and_prepare(
            file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    assert list(builder.info.splits) == ["test"]
    test = {e["study_id"].decode(): e for e in builder.as_data_source("test")}
    assert len(test) == 590 and set(test) == want["test"]
    assert _logged_skips(caplog)["missing_image"] == 2069 + 296
    # The frontal image is chosen by the projections file, also where the XML lists it second;
    # one test study has lateral images only and keeps its first image.
    views = [e["view"].decode() for e in test.values()]
    assert views.count("Frontal") == 589 and test["CXR800_IM-2334"]["view"].decode() == "Lateral"
    assert test["CXR800_IM-2334"]["image_id"].decode() == "CXR800_IM-2334-4001"

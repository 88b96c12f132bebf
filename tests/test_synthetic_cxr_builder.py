"""The synthetic_cxr TFDS builder: counts, disjoint splits, decoded features equal the generator's."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mavilt_jax.data import phantoms
from tfds_builders.synthetic_cxr import SyntheticCxr, SyntheticCxrConfig
from tfds_builders.synthetic_cxr import synthetic_cxr_dataset_builder as builder_module
from tfds_builders.synthetic_cxr.synthetic_cxr_dataset_builder import SPLIT_SEEDS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = SyntheticCxr(config="r32_tiny", data_dir=data_dir)
    builder.download_and_prepare()
    return builder, data_dir


def test_counts_format_and_configs(built):
    builder, _ = built
    assert builder.name == "synthetic_cxr"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 16, "validation": 4, "test": 4}
    assert builder.info.file_format.value == "array_record"
    configs = {c.name: c for c in SyntheticCxr.BUILDER_CONFIGS}
    assert {"r64_small", "r128", "r128_small", "r256"} <= set(configs)
    r128 = configs["r128"]
    assert (r128.resolution, r128.num_train, r128.num_validation, r128.num_test) == (128, 2000, 200, 200)


def test_the_large_build_evaluates_on_the_same_studies_as_r64(tmp_path, monkeypatch):
    """r64_large (the main job's stages 1-2) adds training studies only: its validation and test
    splits are r64's, study for study, so results on either build compare; its first training
    studies are r64's too. Read from the builders' example generators (nothing is built)."""
    configs = {c.name: c for c in SyntheticCxr.BUILDER_CONFIGS}
    large, r64 = configs["r64_large"], configs["r64"]
    assert (large.resolution, large.num_train, large.num_validation, large.num_test) == (64, 20000, 200, 200)
    assert (r64.resolution, r64.num_validation, r64.num_test) == (64, 200, 200)
    monkeypatch.setattr(builder_module.os, "cpu_count", lambda: 1)  # generate in this process
    builders = [SyntheticCxr(config=name, data_dir=tmp_path, file_format="array_record") for name in ("r64_large", "r64")]
    for split, n in (("validation", 3), ("test", 3), ("train", 2)):
        first = [[example for example, _ in zip(b._generate_examples(split), range(n))] for b in builders]
        assert [k for k, _ in first[0]] == [k for k, _ in first[1]] == [
            phantoms.study_id(SPLIT_SEEDS[split], i) for i in range(n)]
        for (_, a), (_, b) in zip(*first):
            assert a["image"] == b["image"] and a["findings"] == b["findings"]


def test_decoded_examples_equal_the_generator(built):
    _, data_dir = built
    for split in ("train", "test"):
        source = tfds.data_source("synthetic_cxr/r32_tiny", data_dir=data_dir, split=split)
        by_id = {}
        for i in range(len(source)):
            ex = source[i]
            by_id[ex["study_id"].decode()] = ex
        assert len(by_id) == len(source)
        for index in range(len(source)):
            ref = phantoms.generate_study(SPLIT_SEEDS[split], index, 32)
            ex = by_id[ref["study_id"]]
            assert ex["image"].shape == (32, 32, 1) and ex["image"].dtype == np.uint8
            np.testing.assert_array_equal(ex["image"][..., 0], ref["image"])
            np.testing.assert_array_equal(ex["labels"], ref["labels"])
            assert ex["labels"].dtype == np.int8
            assert ex["findings"].decode() == ref["findings"]
            assert ex["impression"].decode() == ref["impression"]
            assert ex["attributes"].decode() == ref["attributes"]
            assert ex["view"].decode() == ref["view"]
            assert [q.decode() for q in ex["vqa"]["question"]] == [q["question"] for q in ref["vqa"]]
            assert [a.decode() for a in ex["vqa"]["answer"]] == [q["answer"] for q in ref["vqa"]]


def test_splits_are_disjoint(built):
    _, data_dir = built
    ids, images = {}, {}
    for split in SPLIT_SEEDS:
        source = tfds.data_source("synthetic_cxr/r32_tiny", data_dir=data_dir, split=split)
        ids[split] = {source[i]["study_id"] for i in range(len(source))}
        images[split] = {source[i]["image"].tobytes() for i in range(len(source))}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    assert not images["train"] & images["test"]


def test_custom_config(tmp_path):
    config = SyntheticCxrConfig(name="r48_custom", resolution=48, num_train=3, num_validation=1, num_test=1, seed=5)
    builder = SyntheticCxr(config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    source = tfds.data_source("synthetic_cxr/r48_custom", data_dir=tmp_path, split="train")
    assert len(source) == 3 and source[0]["image"].shape == (48, 48, 1)
    assert source[0]["study_id"].decode().startswith("syn0015-")  # seed 5 * 3 splits + train


def test_parallel_generation_matches_the_generator(tmp_path):
    config = SyntheticCxrConfig(name="r32_parallel", resolution=32, num_train=64, num_validation=1, num_test=1, num_workers=2)
    builder = SyntheticCxr(config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    source = tfds.data_source("synthetic_cxr/r32_parallel", data_dir=tmp_path, split="train")
    assert len(source) == 64
    by_id = {source[i]["study_id"].decode(): source[i] for i in range(64)}
    for index in (0, 17, 63):
        ref = phantoms.generate_study(SPLIT_SEEDS["train"], index, 32)
        np.testing.assert_array_equal(by_id[ref["study_id"]]["image"][..., 0], ref["image"])
        assert by_id[ref["study_id"]]["findings"].decode() == ref["findings"]

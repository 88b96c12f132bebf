"""Synthetic radiographs: determinism, resolution, and findings visible where they should be."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.data import phantoms as P


def test_same_seed_same_study_different_index_differs():
    a, b = P.generate_study(3, 11, 64), P.generate_study(3, 11, 64)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (a["findings"], a["impression"], a["attributes"]) == (b["findings"], b["impression"], b["attributes"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    c = P.generate_study(3, 12, 64)
    assert not np.array_equal(a["image"], c["image"]) and a["study_id"] != c["study_id"]
    # The text side does not depend on the resolution.
    assert P.generate_study(3, 11, 128)["findings"] == a["findings"]


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_resolution_and_types(resolution):
    s = P.generate_study(0, 1, resolution)
    assert s["image"].shape == (resolution, resolution) and s["image"].dtype == np.uint8
    assert s["labels"].shape == (14,) and s["labels"].dtype == np.int8
    assert s["view"] in ("PA", "AP") and isinstance(s["findings"], str) and isinstance(s["impression"], str)
    assert P.findings_from_json(s["attributes"]).to_json() == s["attributes"]
    assert 20 < s["image"].mean() < 235 and s["image"].std() > 20  # exposed, not blank


def test_normal_fraction_and_prevalence_override():
    rng = np.random.default_rng(0)
    normal = np.mean([P.sample_findings(rng).is_normal for _ in range(600)])
    assert 0.33 < normal < 0.47  # 0.4 +- 3.5 sigma
    rng = np.random.default_rng(0)
    assert all(P.sample_findings(rng, {"normal": 1.0}).is_normal for _ in range(50))
    counts = [P.sample_findings(rng, {"normal": 0.0, "pneumothorax": 1.0}).pneumothorax is not None for _ in range(50)]
    assert all(counts)
    with pytest.raises(ValueError, match="unknown prevalence"):
        P.sample_findings(rng, {"pneumothorx": 0.5})
    with pytest.raises(ValueError, match="probabilities"):
        P.sample_findings(rng, {"normal": 1.5})


def _pair(findings: P.Findings, resolution: int = 128, seed: int = 0):
    """The same study rendered with and without its findings (same acquisition and noise)."""
    base = P.Findings(view=findings.view, ctr=findings.ctr)
    img, masks = P.render_with_masks(findings, resolution, np.random.default_rng(seed))
    ref, ref_masks = P.render_with_masks(base, resolution, np.random.default_rng(seed))
    return img.astype(float), ref.astype(float), masks, ref_masks


def test_large_right_effusion_brightens_right_costophrenic_region():
    f = P.Findings(effusion=P.Effusion("right", "large"))
    img, ref, masks, ref_masks = _pair(f)
    # The right costophrenic region: lateral lower quarter of the right lung (image left).
    lung = ref_masks["lung_right"] > 0.5
    rows, cols = np.nonzero(lung)
    r0 = rows.max() - (rows.max() - rows.min()) // 5
    c1 = cols.min() + (cols.max() - cols.min()) // 3
    roi = lung.copy()
    roi[:r0] = False
    roi[:, c1:] = False
    assert roi.sum() > 20
    assert img[roi].mean() > ref[roi].mean() + 25
    left = ref_masks["lung_left"] > 0.5  # the other side is unchanged
    assert abs(img[left].mean() - ref[left].mean()) < 1.0
    # The meniscus: fluid reaches higher laterally than medially.
    fluid = masks["effusion_right"] > 0.5
    width = cols.max() - cols.min()
    lateral, medial = cols.min() + width // 5, cols.min() + 3 * width // 4  # right lung: lateral = image left
    assert np.nonzero(fluid[:, lateral])[0].min() < np.nonzero(fluid[:, medial])[0].min() - 2


def test_pneumothorax_region_is_darker_and_without_lung_markings():
    f = P.Findings(pneumothorax=P.Pneumothorax("left", "large"))
    img, ref, masks, ref_masks = _pair(f, resolution=256)
    region = masks["pneumothorax"] > 0.9
    assert region.sum() > 200
    assert img[region].mean() < ref[region].mean() - 5
    # No lung markings (vessel shadows) in the region, where the same study without it has them.
    assert masks["markings"][region].mean() < 0.02 * ref_masks["markings"][region].mean()
    assert ref_masks["markings"][region].mean() > 0.005
    # The visceral pleural line: brighter than the air just lateral to it, on every row it crosses.
    collapsed = (masks["lung_left"] > 0.5) & (masks["pneumothorax"] < 0.1)
    rows = [r for r in range(256) if collapsed[r].any() and region[r, np.nonzero(collapsed[r])[0].max() + 4:].any()
            and masks["heart"][r, np.nonzero(collapsed[r])[0].max()] < 0.5]
    assert len(rows) > 40
    visible = []
    for r in rows[5:-5]:
        edge = np.nonzero(collapsed[r])[0].max()  # left lung: the collapsed lung lies medial (image left)
        beside = max(img[r, edge - 7:edge - 3].mean(), img[r, edge + 4:edge + 8].mean())
        visible.append(img[r, edge - 1:edge + 3].max() > beside + 3)  # a thin line brighter than both sides
    assert np.mean(visible) > 0.75  # ribs crossing the line hide it on a few rows


@pytest.mark.parametrize("ctr,view,seed", [(0.40, "PA", 0), (0.47, "AP", 1), (0.56, "PA", 2), (0.66, "AP", 3)])
def test_cardiothoracic_ratio_measured_on_the_rendered_masks(ctr, view, seed):
    cardio = P.Cardiomegaly("moderate") if ctr > 0.52 else None
    f = P.Findings(view=view, ctr=ctr, cardiomegaly=cardio)
    _, masks = P.render_with_masks(f, 256, np.random.default_rng(seed))
    heart = masks["heart"] > 0.5
    lungs = (masks["lung_right"] > 0.5) | (masks["lung_left"] > 0.5)

    def widest(mask):
        widths = [np.ptp(np.nonzero(row)[0]) + 1 for row in mask if row.any()]
        return max(widths)

    assert widest(heart) / widest(lungs) == pytest.approx(ctr, abs=0.02)


def test_nodule_and_consolidation_are_brighter_than_lung():
    f = P.Findings(nodule=P.Nodule("mass", 45, "right", "upper"), opacity=P.Opacity("consolidation", "left", "lower"))
    img, ref, masks, _ = _pair(f)
    for name in ("nodule", "opacity"):
        region = masks[name] > 0.7
        assert region.sum() > 10, name
        assert img[region].mean() > ref[region].mean() + 20, name


@pytest.mark.parametrize("healed", [False, True])
def test_rib_fracture_changes_only_its_site(healed):
    f = P.Findings(fracture=P.Fracture("right", 6, healed=healed))
    img, ref, masks, _ = _pair(f, resolution=256)
    site = masks["fracture"] > 0.3
    assert site.any()
    rows, cols = np.nonzero(site)
    changed = np.abs(img - ref) > 4
    assert changed[site].mean() > 0.3  # the break (or callus) shows where it is recorded
    # Nothing changes beyond a rib's height around the site (and, for an acute fracture, along
    # the displaced lateral fragment, which on the right side lies toward the image left).
    window = np.zeros_like(changed)
    lateral_end = 0 if not healed else max(cols.min() - 12, 0)
    below = 12 if healed else 30  # the ribs run downward laterally
    window[max(rows.min() - 12, 0):rows.max() + below, lateral_end:cols.max() + 12] = True
    assert not (changed & ~window).any()
    assert cols.max() < 128
    if healed:  # callus is bone: brighter
        assert img[site].mean() > ref[site].mean() + 3


def test_widened_mediastinum_is_wider():
    f = P.Findings(widened_mediastinum=P.WidenedMediastinum(0.19))
    _, masks = P.render_with_masks(f, 128, np.random.default_rng(0))
    _, ref_masks = P.render_with_masks(P.Findings(), 128, np.random.default_rng(0))
    row = 40  # the superior mediastinum, above the heart
    width = (masks["mediastinum"][row] > 0.5).sum()
    ref_width = (ref_masks["mediastinum"][row] > 0.5).sum()
    assert width > 1.4 * ref_width


def test_edema_is_perihilar_and_atelectasis_is_a_basal_band():
    f = P.Findings(edema=P.Edema("moderate"), atelectasis=P.Atelectasis("left"))
    img, ref, masks, ref_masks = _pair(f, resolution=128)
    lungs = (ref_masks["lung_right"] > 0.5) | (ref_masks["lung_left"] > 0.5)
    haze = masks["edema"] > 0.4
    periphery = lungs & (masks["edema"] < 0.15)
    assert (haze & lungs).sum() > 50 and periphery.sum() > 50
    gain = img - ref
    assert gain[haze & lungs].mean() > max(20.0, gain[periphery].mean() + 10)  # brightest near the hila
    band = masks["atelectasis"] > 0.5
    assert band.sum() > 10
    assert np.nonzero(band)[1].min() >= 64  # left lung: image right
    assert img[band].mean() > ref[band].mean() + 15


def test_devices_are_radiopaque():
    f = P.Findings(devices=("endotracheal tube", "pacemaker"))
    img, ref, masks, _ = _pair(f)
    region = masks["devices"] > 0.9
    assert img[region].mean() > ref[region].mean() + 10
    assert np.percentile(img[region], 90) > 230


def test_removing_a_finding_changes_nothing_else():
    f = P.Findings(effusion=P.Effusion("left", "small"), nodule=P.Nodule("nodule", 20, "right", "middle"))
    a = P.render(f, 64, np.random.default_rng(5)).astype(int)
    b = P.render(dataclasses.replace(f, nodule=None), 64, np.random.default_rng(5)).astype(int)
    _, masks = P.render_with_masks(f, 64, np.random.default_rng(5))
    changed = np.abs(a - b) > 1
    assert changed.any() and not (changed & (masks["nodule"] < 0.01)).any()


def test_attributes_round_trip():
    rng = np.random.default_rng(9)
    for _ in range(300):
        f = P.sample_findings(rng)
        assert P.findings_from_json(f.to_json()) == f


def test_labels_of_generated_studies():
    s = P.generate_study(0, 3, 32)
    f = P.findings_from_json(s["attributes"])
    np.testing.assert_array_equal(s["labels"], P.findings_to_labels(f))
    assert set(np.unique(s["labels"])) <= {L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT}


def test_cli_writes_grid_and_reports(tmp_path):
    out = tmp_path / "sheet"
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.data.phantoms", "--out", str(out), "--n", "4", "--resolution", "64"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (128, 128)
    np.testing.assert_array_equal(grid[:64, 64:], P.generate_study(0, 1, 64)["image"])
    text = (out / "reports.md").read_text()
    assert "IMPRESSION:" in text and P.study_id(0, 3) in text


def test_cli_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.data.phantoms", "--out", str(tmp_path), "--resolution", "8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--resolution must be" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="resolution"):
        P.generate_study(0, 0, 16)

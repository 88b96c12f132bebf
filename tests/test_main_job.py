"""The README's main job end to end at the smallest size: every step, the evaluation, the terminal."""

from __future__ import annotations

import json
import os

from PIL import Image

from mavilt_jax.allocator import TCMALLOC_PATHS

STEPS = ("cxr_encoder", "judge", "vqgan", "vqgan_decoder", "text_pretrain", "stage1", "stage2", "evaluation")


def test_main_job_trains_then_evaluates_with_controls_and_ceilings(tiny_main_job):
    workdir = tiny_main_job["workdir"]
    for name in STEPS[:-1]:
        assert (workdir / name / "checkpoints").is_dir(), name
    results = json.loads((workdir / "results.json").read_text())
    assert results["split"] == "test" and results["n_studies"] == 8
    for row in ("model", "control_constant_report", "control_shuffled_image"):
        ce = results[row]["report_generation"]["clinical_efficacy"]["f1_micro"]
        assert 0.0 <= ce["value"] <= 1.0 and ce["n"] == 8, row
        assert 0.0 <= results[row]["vqa"]["metrics"]["accuracy"]["value"] <= 1.0, row
    # The constant control: one report (the most common training report) for every study.
    assert isinstance(results["control_constant_report"]["report"], str)
    assert results["control_constant_report"]["report"].strip()
    judge_real = results["ceiling_judge_real"]["report_to_image"]["conditional"]["metrics"]["auroc_macro"]["value"]
    assert 0.0 <= judge_real <= 1.0
    assert set(results["bars"]) == {"ce_f1_micro", "vqa_accuracy", "vqa_auroc", "judge_auroc"}
    card = (workdir / "report_card.md").read_text()
    assert "control: constant report" in card and "control: shuffled image" in card and "ceiling:" in card
    assert "Table I" in card and "Table III" in card
    assert Image.open(workdir / "image_grid.png").size[0] > 0
    assert "**Generated:**" in (workdir / "sample_reports.md").read_text()
    timings = json.loads((workdir / "pipeline_timings.json").read_text())
    assert set(timings) == {*STEPS, "total"}
    predictions = (workdir / "predictions" / "predictions.jsonl").read_text().splitlines()
    assert {json.loads(line)["task"] for line in predictions} == {"report_generation", "report_to_image", "vqa"}


def test_main_job_chooses_the_guidance_scale_on_validation_studies_only(tiny_main_job):
    workdir = tiny_main_job["workdir"]
    results = json.loads((workdir / "results.json").read_text())
    selection = results["guidance_selection"]
    assert selection["split"] == "validation" and selection["n_studies"] == 8
    aurocs = selection["judge_auroc_macro"]
    assert set(aurocs) == {"1.0", "3.0"}
    # The highest validation AUROC wins, ties to the smaller scale (NaN: a scale the judge could not score).
    finite = {float(k): v for k, v in aurocs.items() if v == v}
    expected = min(k for k, v in finite.items() if v == max(finite.values()))
    assert selection["chosen"] == expected == results["guidance_scale"]
    # The images it judged are of validation studies, none of the test studies'.
    test_ids = {json.loads(line)["study_id"] for line in
                (workdir / "predictions" / "predictions.jsonl").read_text().splitlines()}
    judged = {p.name.rsplit("_", 1)[0] for p in (workdir / "predictions" / "guidance_selection").glob("*/images/*_generated.png")}
    assert len(judged) == 8 and not judged & test_ids
    assert set(results["guidance_sweep"]) == {"1.0", "3.0"}
    assert "chosen on 8 validation studies" in (workdir / "report_card.md").read_text()


def test_main_job_terminal_shows_progress_not_library_logs(tiny_main_job):
    out = tiny_main_job["stdout"]
    lines = out.splitlines()
    for i, name in enumerate(STEPS, 1):
        assert any(line.startswith(f"[{i}/{len(STEPS)} {name}]") for line in lines), name
    assert any("ETA" in line and "step 3/3" in line for line in lines)
    assert lines[-1].startswith("pipeline finished:")
    both = out + tiny_main_job["stderr"]
    assert "orbax" not in both and "checkpoint_manager" not in both  # library INFO goes to the log file
    assert "Downloading and preparing" not in both  # TFDS's print when a dataset is first built
    assert "CheckpointManager" in (tiny_main_job["workdir"] / "main.INFO").read_text()
    assert len(lines) < 150
    # The job restarts itself with tcmalloc where the system has it (mavilt_jax.allocator).
    expected = "tcmalloc" if any(os.path.exists(p) for p in TCMALLOC_PATHS) else "glibc malloc"
    assert sum(line.startswith("C allocator: ") for line in lines) == 1
    assert f"C allocator: {expected}" in out

"""Evaluation never loses work: an earlier results.json stays unless --overwrite, and generation
interrupted part way resumes after the studies whose predictions were already appended."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from mavilt_jax import evaluate
from mavilt_jax.evaluation import generate, records, suite


def _vqa_file(path, n=6):
    rows = [{"task": "vqa", "study_id": f"s{i}", "question": "Is there cardiomegaly?", "answer": "yes" if i % 2 else "no",
             "prediction": "yes" if i < 3 else "no", "p_yes": 0.1 * i} for i in range(n)]
    records.write_records(path, rows)
    return path


def test_an_earlier_results_json_is_kept_unless_overwrite(tmp_path):
    pred, out = _vqa_file(tmp_path / "p.jsonl"), tmp_path / "out"
    cfg = suite.EvalConfig(resamples=20, fid_extractors=(), meteor=False)
    evaluate.evaluate(pred, out, cfg)
    before = (out / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate.evaluate(_vqa_file(tmp_path / "q.jsonl", n=4), out, cfg)
    assert (out / "results.json").read_bytes() == before

    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.evaluate", f"--workdir={out}", f"--predictions={pred}"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "--overwrite" in proc.stderr
    assert (out / "results.json").read_bytes() == before

    results = evaluate.evaluate(tmp_path / "q.jsonl", out, cfg, overwrite=True)
    assert json.loads((out / "results.json").read_text())["vqa"]["counts"]["questions"] == 4 == \
        results["vqa"]["counts"]["questions"]


class _StubGenerator:
    """Stands in for `generate.Generator`: outputs are functions of the study, and it fails on
    the batch that holds ``fail_on`` (an interruption)."""

    instruction = False

    def __init__(self, fail_on: str | None = None):
        self.cfg = generate.GenerationConfig(batch_size=2)
        self.builder = types.SimpleNamespace(report_text=lambda e: f"report of {e['study_id']}")
        self.fail_on, self.seen = fail_on, []

    def encode(self, images):
        return images.reshape(len(images), -1)[:, :3].astype(np.int32)

    def reports(self, codes):
        return [f"generated {int(c[0])}" for c in codes]

    def images(self, reports):
        if self.fail_on is not None and any(self.fail_on in r for r in reports):
            raise KeyboardInterrupt  # the user stops the run in the middle of a batch
        self.seen += reports
        return np.stack([np.full((4, 4), len(r), np.uint8) for r in reports])


def _studies(n=5):
    return [{"study_id": f"s{i}", "image": np.full((4, 4), i, np.uint8)} for i in range(n)]


def test_interrupted_generation_resumes_after_the_written_studies(tmp_path):
    reference = generate.predict(_StubGenerator(), _studies(), tmp_path / "ref", tasks=("report_generation", "report_to_image"))

    path = tmp_path / "run" / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate.predict(_StubGenerator(fail_on="s2"), _studies(), tmp_path / "run",
                         tasks=("report_generation", "report_to_image"), records_path=path)
    assert [r["study_id"] for r in records.resume_records(path)] == ["s0", "s1", "s0", "s1"]  # batch 1 only
    with open(path, "a") as f:
        f.write('{"task": "report_generation", "study_id": "s2", "refer')  # a line cut off by the kill

    again = _StubGenerator()
    resumed = generate.predict(again, _studies(), tmp_path / "run", tasks=("report_generation", "report_to_image"),
                               records_path=path)
    assert again.seen == ["report of s2", "report of s3", "report of s4"]  # s0, s1 not generated again
    key = lambda r: (r["task"], r["study_id"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(reference, key=key)
    on_disk = records.read_records(path)
    assert on_disk.skipped == [] and sorted(sum(on_disk.by_task.values(), []), key=key) == sorted(reference, key=key)

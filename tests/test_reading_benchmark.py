"""`benchmarks.reading` (where the reading of a radiograph is lost): its parts against hand-computed
figures and the model's own logits, and its CLI over the tiny main job's stage-2 workdir."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import reading
from mavilt_jax.data import labels as L

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _labels(rows: list[dict[str, int]]) -> np.ndarray:
    out = np.full((len(rows), len(L.OBSERVATIONS)), L.ABSENT, np.int8)
    for i, row in enumerate(rows):
        for name, state in row.items():
            out[i, L.INDEX[name]] = state
    return out


def test_said_rates_by_hand():
    P, N, U = L.POSITIVE, L.NEGATIVE, L.UNCERTAIN
    reference = _labels([{"Edema": P}, {"Edema": P}, {"Edema": N}, {"Edema": U}, {}])
    generated = _labels([{"Edema": P}, {}, {"Edema": P}, {"Edema": P}, {}])
    rates = reading.said_rates(generated, reference, ["Edema", "Fracture"])
    # reference positives (uncertain counts as positive): studies 0, 1, 3; generated: 0, 2, 3
    assert rates["Edema"]["said_recall"] == pytest.approx(2 / 3)
    assert rates["Edema"]["said_precision"] == pytest.approx(2 / 3)
    assert np.isnan(rates["Fracture"]["said_recall"]) and np.isnan(rates["Fracture"]["said_precision"])


def test_state_probe_reads_a_separable_state_and_leaves_out_uncertain_labels():
    rng = np.random.default_rng(0)
    P, N, U = L.POSITIVE, L.NEGATIVE, L.UNCERTAIN

    def split(n):
        y = rng.integers(0, 2, n).astype(bool)
        states = rng.normal(size=(n, 6)).astype(np.float32)
        states[:, 2] += np.where(y, 4.0, -4.0)  # one direction carries the observation
        labels = _labels([{"Edema": P if v else N, "Cardiomegaly": P if rng.random() < 0.5 else N} for v in y])
        return states, labels, y

    s_train, l_train, _ = split(200)
    s_test, l_test, y_test = split(100)
    l_test[:10, L.INDEX["Edema"]] = U  # left out of the score, as in `probe.code_probe`
    out = reading.state_probe(s_train, l_train, s_test, l_test, ["Edema", "Cardiomegaly", "Fracture"])
    assert out["Edema"] == pytest.approx(1.0)
    # a label drawn independently of the states: about chance (100 studies: well within 0.5 +- 0.2)
    assert abs(out["Cardiomegaly"] - 0.5) < 0.2
    assert "Fracture" not in out  # one class only


@pytest.fixture(scope="module")
def stage2_workdir(request) -> pathlib.Path:
    given = os.environ.get("MAVILT_TEST_WORKDIR")
    root = pathlib.Path(given) if given else pathlib.Path(request.getfixturevalue("tiny_main_job")["workdir"])
    return root / "stage2" if (root / "stage2").is_dir() else root


@pytest.mark.tiny_main_job
def test_last_prompt_states_are_what_the_head_reads(stage2_workdir):
    """The state times the LM head gives the model's own next-token logits at the prompt's end
    (a plain forward pass, no capture), for prompts of two lengths in one call."""
    import jax.numpy as jnp

    from mavilt_jax import inference
    from mavilt_jax.evaluation import generate

    config, _ = inference.workdir_info(stage2_workdir)
    generator = generate.load_generator(config, str(stage2_workdir))
    rng = np.random.default_rng(1)
    codes = rng.integers(0, generator.layout.codebook_size, (3, generator.layout.codes_per_image))
    prompts = generator.report_prompts(codes)
    prompts.append(generator.builder.instruction_prompt("vqa", codes=codes[0], question="Is there edema?"))
    assert len({len(p) for p in prompts}) == 2
    states = reading.last_prompt_states(generator, prompts, batch_size=2)
    params = generator.params
    head = params["lm_head"]["kernel"] if "lm_head" in params else params["embed"]["embedding"].T
    for prompt, state in zip(prompts, states, strict=True):
        tokens = jnp.asarray([prompt], jnp.int32)
        logits, _ = generator.stage.model.apply({"params": params}, tokens, jnp.arange(len(prompt))[None])
        np.testing.assert_allclose(state @ np.asarray(head), np.asarray(logits[0, -1]), rtol=1e-4, atol=1e-4)


@pytest.mark.tiny_main_job
def test_cli_writes_the_table_over_a_stage2_workdir(stage2_workdir, tmp_path):
    out = tmp_path / "reading.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.reading", f"--workdir={stage2_workdir}",
                           "--train_studies=24", "--test_studies=8", f"--out={out}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stage"] == "stage2" and result["test_studies"] == 8 and result["train_studies"] == 24
    assert set(result["rows"]) <= set(L.OBSERVATIONS[1:])
    for row in result["rows"].values():
        for column in reading.COLUMNS:
            assert np.isnan(row[column]) or 0.0 <= row[column] <= 1.0
    assert "| observation | codes | state | asked |" in proc.stdout


def test_cli_user_error_is_one_line_with_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.reading", f"--workdir={tmp_path / 'missing'}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.tiny_main_job
def test_p_yes_is_the_answers_p_yes(stage2_workdir):
    """`Generator.p_yes` (what `asked` uses) gives the P(yes) of `Generator.answers` without the greedy answer."""
    from mavilt_jax import inference
    from mavilt_jax.evaluation import generate

    config, _ = inference.workdir_info(stage2_workdir)
    generator = generate.load_generator(config, str(stage2_workdir))
    codes = np.random.default_rng(2).integers(0, generator.layout.codebook_size, (2, generator.layout.codes_per_image))
    questions = [{"question": "Is there edema?", "question_type": "presence"},
                 {"question": "Is the heart enlarged?", "question_type": "presence"}]
    _, expected = generator.answers(codes, questions)
    np.testing.assert_allclose(generator.p_yes(codes, questions), expected, rtol=1e-12)

"""The main CLI: wrong arguments end with a one-line message (exit status != 0), no traceback."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "mavilt_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/no_such_file.py", "--workdir=W"], "No such file"),
    (["--config=configs/stage1.py:no_such_variant", "--workdir=W"], "unknown config variant 'no_such_variant'"),
    (["--config=configs/stage1.py:modle=7b", "--workdir=W"], "unknown config variant 'modle'; known: ["),
    (["--config=configs/stage1.py", "--workdir=W", "--config.no_such_field=1"], "no_such_field"),
    (["--config=configs/stage1.py", "--workdir=W", "--config.total_steps=many"], "total_steps"),
    (["--config=configs/stage1.py"], "--workdir"),
    (["--config=configs/stage1.py", "--workdir=W", "--no_such_flag=1"], "no_such_flag"),
    (["--config=configs/stage1.py", "--workdir=W", "stray"], "unexpected arguments: stray"),
])
def test_bad_arguments_exit_with_a_message(args, message, tmp_path):
    args = [a.replace("W", str(tmp_path / "w")) if a.startswith("--workdir") else a for a in args]
    proc = _main(*args)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in output, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    assert not (tmp_path / "w").exists()  # nothing started


def test_config_variants_parse():
    from configs import common, stage1, stage2, text_pretrain

    c = stage1.get_config("runlocal,model=tiny,recon=0,reg=0.5,steps=7")
    assert (c.loss.lambda_recon, c.loss.lambda_reg, c.total_steps, c.model.hidden_size) == (0.0, 0.5, 7, 32)
    c = stage2.get_config("runlocal,stage1=/x,steps=3")
    assert (c.stage, c.init_from, c.total_steps) == ("stage2", "/x", 3)
    assert text_pretrain.get_config("model=smollm2").model.pretrained == "smollm2_gguf"
    with pytest.raises(ValueError, match="unknown model size"):
        common.llm_config("huge")

"""AOT compilation for a TPU slice (`mavilt_jax.aot`): the smallest named configuration's real
sampler compiles for its slice, fits, and holds the parameter bytes counted by hand; the
command's verdicts and user errors.

The compile test needs the ``libtpu`` wheel (``pip install -e .[tpu]``, as CI does) and skips
with that reason without it. Only the smallest named configuration is compiled here, its sampler
only (the train steps and the larger ones: ``python -m mavilt_jax.aot --all --quick``).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from configs import accelerators
from mavilt_jax import aot, tpu_topologies

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(not tpu_topologies.have_libtpu(), reason="libtpu not installed (pip install -e '.[tpu]')")


def test_slice_names():
    assert (tpu_topologies.parse("v5p-64").topology_name, tpu_topologies.parse("v5p-64").num_chips) == ("v5p:2x4x4", 32)
    assert (tpu_topologies.parse("v5e-8").topology_name, tpu_topologies.parse("v5e-8").num_chips) == ("v5e:2x4", 8)
    assert tpu_topologies.parse("v6e:4x4").num_chips == 16
    with pytest.raises(ValueError, match="unknown TPU slice 'v5p-63'"):
        tpu_topologies.parse("v5p-63")


def test_verdict_says_by_how_much():
    gib = aot.GIB
    over = aot.Report("stage1", dict(used=20 * gib), hbm_bytes=16 * gib)
    assert aot.verdict(over) == "stage1: DOES NOT FIT, needs 20.00 GiB per chip, 4.00 GiB over the 16.00 GiB HBM"
    fits = aot.Report("sampler", dict(used=4 * gib), hbm_bytes=16 * gib)
    assert aot.verdict(fits) == "sampler: fits, 4.00 of 16.00 GiB per chip (12.00 GiB free)"
    refused = aot.Report("stage1", dict(used=0), hbm_bytes=95 * gib, error=(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(124.59G) exceeds available HBM (95.74G)."))
    assert aot.verdict(refused).startswith("stage1: DOES NOT FIT, 28.85 GiB over (the compiler refused: ")


@pytest.mark.parametrize("args, message", [
    (["--config=configs/stage1.py:model=7b", "--topology=v5p-63"], "error: unknown TPU slice 'v5p-63'"),
    (["--config=configs/stage1.py:model=7x", "--topology=v5p-64"], "error: configs/stage1.py:model=7x: unknown model size"),
    (["--config=configs/nope.py", "--topology=v5p-64"], "error: config file 'configs/nope.py' not found"),
])
def test_user_errors_exit_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "mavilt_jax.aot", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


@needs_libtpu
def test_smallest_named_config_compiles_and_fits_on_its_slice():
    # The sampler of the periodic samples: ~15 s of CPU. The train steps take minutes (XLA's TPU
    # code generation for the 256 px VQ-GAN convolutions): python -m mavilt_jax.aot --all --quick.
    config = accelerators.config(name="smollm2")
    tpu = tpu_topologies.parse(config.aot.topology)
    with aot.quick_compile():
        (report,) = aot.compile_programs(config, tpu_topologies.devices(tpu), tpu.chip, programs=("sampler",))
    assert report.fits, aot.verdict(report)
    # SmolLM2-135M by hand: 30 layers x (q, o: 576^2; k, v: 576 x 192; MLP: 3 x 576 x 1536; two
    # norms: 576) + final norm 576 + the tied embedding of 49,152 text ids, 1,024 codes and 6
    # specials (x 576), replicated (data parallelism), float32.
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    params = 30 * layer + 576 + (49152 + 1024 + 6) * 576
    assert params == 135_108_288
    assert report.state_bytes["params"] == 4 * params
    # Adam: two float32 moments of every parameter (plus scalar counts).
    assert 8 * params <= report.state_bytes["opt_state"] < 8 * params + 1024
    # The parameters are the sampler's arguments, in HBM (with the prompts).
    assert report.memory["argument"] >= 4 * params
    assert report.memory["used"] < tpu.chip.hbm_bytes
    # Decoding reads every parameter per new token: 258 tokens x 4 B x params per chip, at least.
    assert report.bytes_accessed >= 258 * 4 * params
    assert report.tokens_per_s_per_chip > 0

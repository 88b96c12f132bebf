#!/usr/bin/env bash
# The real stage-1 steps of the smollm2 and 1b accelerator configurations on one lent GPU (the
# `device` tool's H200): step time, tokens/s and MFU (benchmarks/gpu_check.py). XLA cannot compile
# for a GPU without one, so this is the GPU counterpart of `python -m mavilt_jax.aot`.
#
# Once, here (the device image has jax, flax, optax, orbax, tokenizers, transformers; the rest of
# the project's pure-Python requirements travel as wheels):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ml-collections clu grain array-record
# Then the device tool's run, with carry [".whl"] and timeout_s 540:
#   bash launch/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
out=${OUT:-/tmp}
timeout 480 python3 benchmarks/gpu_check.py --names=smollm2,1b --steps=5 --batch_size=8 --out="$out/gpu_check.json" \
  2>&1 | tee "$out/gpu_check.log"

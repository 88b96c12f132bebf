#!/usr/bin/env bash
# Runs a stage on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh [--create] NAME ZONE ACCELERATOR CONFIG[:VARIANT] WORKDIR [--config.x=y ...]
#   launch/tpu_vm.sh --create mavilt-v5 us-east5-a v5litepod-16 configs/stage1.py:model=1b,text=gs://b/text gs://b/runs/stage1
#
# --create: create the TPU VM first (runtime $RUNTIME_VERSION). Then the repository is copied to
# every worker, installed with jax[tpu], and main runs on all workers at once; on a pod slice
# jax.distributed.initialize() finds the coordinator and process ids itself. Workdirs should be on
# GCS (gs://...) so that every worker writes checkpoints to the same place.
set -euo pipefail
CREATE=0
if [[ "${1:-}" == "--create" ]]; then CREATE=1; shift; fi
if [[ $# -lt 5 ]]; then
  echo "usage: $0 [--create] NAME ZONE ACCELERATOR CONFIG[:VARIANT] WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
NAME="$1"; ZONE="$2"; ACCELERATOR="$3"; CONFIG="$4"; WORKDIR="$5"; shift 5
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "$CREATE" == 1 ]]; then
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME_VERSION"
fi

# Ship the checkout (without build outputs) to every worker.
tar -C "$REPO_DIR" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ -czf /tmp/mavilt_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/mavilt_jax.tgz "$NAME":~/mavilt_jax.tgz --zone="$ZONE" --worker=all

EXTRA_ARGS="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -euo pipefail
  mkdir -p ~/mavilt_jax && tar -C ~/mavilt_jax -xzf ~/mavilt_jax.tgz && cd ~/mavilt_jax
  python3 -m venv ~/venv && source ~/venv/bin/activate
  pip install -q -U pip && pip install -q 'jax[tpu]' -e .
  python -m mavilt_jax.main --config='$CONFIG' --workdir='$WORKDIR' --distributed=auto$EXTRA_ARGS
"

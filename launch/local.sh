#!/usr/bin/env bash
# Runs one stage (or the demo pipeline) on this machine.
#   launch/local.sh configs/stage1.py:runlocal,text=/tmp/mavilt/text_pretrain /tmp/mavilt/stage1 [--config.total_steps=50 ...]
# With NUM_PROCESSES=N (N > 1) it starts N local JAX processes that talk over 127.0.0.1 (CPU: gloo
# collectives), the way a multi-host job runs; their logs go to WORKDIR/process_<i>.log.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "$(dirname "$0")/.."
NUM_PROCESSES="${NUM_PROCESSES:-1}"
if [[ "$NUM_PROCESSES" -le 1 ]]; then
  exec python -m mavilt_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  python -m mavilt_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" --process_id="$i" "$@" \
    > "$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
# Forward SIGTERM so every process saves its checkpoint before exiting.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"

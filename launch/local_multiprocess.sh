#!/usr/bin/env bash
# Start N training processes on this machine (CPU), joined by jax.distributed through a localhost coordinator.
# Each process gets its own CPU device(s); gloo carries the collectives. Useful to test multi-host code paths.
#
#   launch/local_multiprocess.sh 2 --config tiny --workdir /tmp/run --config.train.data_loading=global
#
# Environment: PORT (coordinator port, default 12355), DEVICES_PER_PROCESS (fake CPU devices each, default 1).
set -euo pipefail

NUM_PROCESSES="${1:?usage: $0 NUM_PROCESSES [python -m elastic_jax.train arguments...]}"
shift
PORT="${PORT:-12355}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
PYTHON="${PYTHON:-python}"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS} ${XLA_FLAGS:-}"
export ELASTIC_JAX_COORDINATOR="localhost:${PORT}"
export ELASTIC_JAX_NUM_PROCESSES="${NUM_PROCESSES}"

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM   # forward Ctrl-C / SIGTERM: every process saves
for ((i = 0; i < NUM_PROCESSES; i++)); do
  ELASTIC_JAX_PROCESS_ID="$i" "$PYTHON" -m elastic_jax.train "$@" > >(sed "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"

#!/usr/bin/env bash
# Start any elastic-jax verb as N processes on this machine (CPU), joined by jax.distributed through a localhost
# coordinator. Each process gets its own fake CPU device(s); gloo carries the collectives. Useful to test
# multi-host code paths before paying for a cluster.
#
#   launch/local_multiprocess.sh 2 elastify --config tiny_elastic --parent /tmp/parent --workdir /tmp/run
#   launch/local_multiprocess.sh --dry-run 2 pretrain --config tiny --workdir /tmp/run   # print, run nothing
#
# pretrain and elastify run on every process; other verbs (importance, eval, ...) run as one process.
# Environment: PORT (coordinator port, default 12355), DEVICES_PER_PROCESS (fake CPU devices each, default 1),
# PYTHON (interpreter, default python), DRY_RUN=1 (same as --dry-run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="$0 [--dry-run] NUM_PROCESSES VERB [verb arguments...]"
ej_parse_dry_run "$@"
shift "$EJ_SHIFT"
NUM_PROCESSES="${1:-}"
[[ -n "$NUM_PROCESSES" ]] || ej_die "missing NUM_PROCESSES; usage: ${USAGE}"
ej_check_count NUM_PROCESSES "$NUM_PROCESSES"
shift
ej_parse_verb "$USAGE" "$@"
PORT="${PORT:-12355}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
ej_check_count DEVICES_PER_PROCESS "$DEVICES_PER_PROCESS"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}${XLA_FLAGS:+ ${XLA_FLAGS}}"
RANKS="$(ej_num_ranks "$EJ_VERB" "$NUM_PROCESSES")"

if [[ "$EJ_DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    env_lines=""
    if ((i < RANKS)); then env_lines="$(ej_host_env "localhost:${PORT}" "$RANKS" "$i")"; fi
    ej_dry_run_host "$i" "$NUM_PROCESSES" localhost "$env_lines"
  done
  exit 0
fi

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM   # forward Ctrl-C / SIGTERM: every process saves
for ((i = 0; i < RANKS; i++)); do
  (
    while IFS= read -r line; do export "${line?}"; done <<< "$(ej_host_env "localhost:${PORT}" "$RANKS" "$i")"
    exec "$EJ_PYTHON" -m "$EJ_MODULE" "$EJ_VERB" "${EJ_ARGS[@]}"
  ) > >(sed "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done

ej_wait_all "${pids[@]}"

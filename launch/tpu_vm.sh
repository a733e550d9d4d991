#!/usr/bin/env bash
# Any elastic-jax verb on a Cloud TPU VM slice: one process per worker, started over `gcloud ... ssh --worker=i`.
# Worker 0 is the jax.distributed coordinator (as jax's own TPU detection would choose); process id = worker index.
#
#   launch/tpu_vm.sh my-tpu us-central2-b pretrain --config small --workdir gs://bucket/runs/small
#   launch/tpu_vm.sh my-tpu us-central2-b elastify --config small_elastic --parent gs://bucket/parent \
#       --workdir gs://bucket/runs/elastic
#   WORKERS="10.0.0.2 10.0.0.3" launch/tpu_vm.sh --dry-run my-tpu us-central2-b eval --checkpoint gs://b/run
#
# pretrain and elastify run on every worker; other verbs (importance, eval, ...) run as one process on worker 0.
# Needs: gcloud, and this repository + its dependencies installed on every worker (e.g. `pip install -e .` in
# REPO_DIR, default ~/elastic_jax). A gs:// workdir keeps checkpoints across preemptions.
# Environment: WORKERS (the workers' internal IPs; default: asked of `gcloud compute tpus tpu-vm describe`),
# PORT (coordinator port, default 8476), REPO_DIR, DRY_RUN=1. JAX_* / XLA_* / LIBTPU_* variables set here are
# passed on to every worker.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="$0 [--dry-run] TPU_NAME ZONE VERB [verb arguments...]"
ej_parse_dry_run "$@"
shift "$EJ_SHIFT"
TPU_NAME="${1:-}"
ZONE="${2:-}"
[[ -n "$TPU_NAME" && -n "$ZONE" ]] || ej_die "missing TPU_NAME or ZONE; usage: ${USAGE}"
shift 2
ej_parse_verb "$USAGE" "$@"
PORT="${PORT:-8476}"
REPO_DIR="${REPO_DIR:-~/elastic_jax}"

if [[ -n "${WORKERS:-}" ]]; then
  read -r -a HOSTS <<< "${WORKERS//,/ }"
else
  read -r -a HOSTS <<< "$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '  ')"
fi
[[ "${#HOSTS[@]}" -gt 0 ]] || ej_die "no workers found for TPU ${TPU_NAME} in ${ZONE}"
NUM_WORKERS="${#HOSTS[@]}"
RANKS="$(ej_num_ranks "$EJ_VERB" "$NUM_WORKERS")"
COORDINATOR="${HOSTS[0]}:${PORT}"

if [[ "$EJ_DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_WORKERS; i++)); do
    env_lines=""
    if ((i < RANKS)); then env_lines="$(ej_host_env "$COORDINATOR" "$RANKS" "$i")"; fi
    ej_dry_run_host "$i" "$NUM_WORKERS" "${TPU_NAME} worker ${i}, ${HOSTS[$i]}" "$env_lines"
  done
  exit 0
fi

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < RANKS; i++)); do
  remote="cd ${REPO_DIR} && exec $(ej_env_line <<< "$(ej_host_env "$COORDINATOR" "$RANKS" "$i")") $(ej_command_line)"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker="$i" --command "$remote" \
    > >(sed "s/^/[w$i] /") 2>&1 &
  pids+=($!)
done

ej_wait_all "${pids[@]}"

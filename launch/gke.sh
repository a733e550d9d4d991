#!/usr/bin/env bash
# Any elastic-jax verb as a Kubernetes Indexed Job on GKE: renders launch/gke.yaml and applies it with kubectl.
#
#   IMAGE=us-docker.pkg.dev/p/r/elastic-jax:latest launch/gke.sh 2 pretrain --config small --workdir gs://b/run
#   launch/gke.sh --dry-run 2 elastify --config small_elastic --parent gs://b/parent --workdir gs://b/el
#   launch/gke.sh --render 2 eval --checkpoint gs://b/el > job.yaml      # the manifest, for review or GitOps
#
# pretrain and elastify run in every pod; other verbs (importance, eval, ...) run as a Job of one pod.
# Environment: IMAGE (a container with this repository installed; required to apply), NAME (Job and Service
# name, default elastic-jax), PORT (coordinator port, default 12355), ACCELERATOR (resource name, default
# nvidia.com/gpu; google.com/tpu on a TPU node pool), CHIPS_PER_HOST (default 8), KUBECTL (default kubectl).
set -euo pipefail
LAUNCH_DIR="$(dirname "${BASH_SOURCE[0]}")"
source "${LAUNCH_DIR}/common.sh"
shopt -u patsub_replacement 2>/dev/null || true   # bash >= 5.2 would expand '&' in the substitutions below

USAGE="$0 [--dry-run | --render] NUM_HOSTS VERB [verb arguments...]"
RENDER=0
if [[ "${1:-}" == "--render" ]]; then RENDER=1; shift; fi
ej_parse_dry_run "$@"
shift "$EJ_SHIFT"
NUM_HOSTS="${1:-}"
[[ -n "$NUM_HOSTS" ]] || ej_die "missing NUM_HOSTS; usage: ${USAGE}"
ej_check_count NUM_HOSTS "$NUM_HOSTS"
shift
ej_parse_verb "$USAGE" "$@"
NAME="${NAME:-elastic-jax}"
PORT="${PORT:-12355}"
ACCELERATOR="${ACCELERATOR:-nvidia.com/gpu}"
CHIPS_PER_HOST="${CHIPS_PER_HOST:-8}"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$ ]] || ej_die "NAME must be a DNS label (a-z, 0-9, -), got '$NAME'"
ej_check_count PORT "$PORT"
ej_check_count CHIPS_PER_HOST "$CHIPS_PER_HOST"
RANKS="$(ej_num_ranks "$EJ_VERB" "$NUM_HOSTS")"
COORDINATOR="${NAME}-0.${NAME}:${PORT}"

# json_string S: S as a JSON (and so YAML) double-quoted string.
json_string() {
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\t'/\\t}"
  s="${s//$'\n'/\\n}"
  printf '"%s"' "$s"
}

render() {
  local command="[" item name value jax_env="" sep=""
  for item in "$EJ_PYTHON" -m "$EJ_MODULE" "$EJ_VERB" "${EJ_ARGS[@]}"; do
    command+="${sep}$(json_string "$item")"
    sep=", "
  done
  command+="]"
  while IFS= read -r item; do
    [[ -n "$item" ]] || continue
    name="${item%%=*}"
    value="${item#*=}"
    jax_env+="            - name: ${name}"$'\n'"              value: $(json_string "$value")"$'\n'
  done <<< "$(ej_jax_env)"
  local line
  while IFS= read -r line; do
    if [[ "$line" == *"# __JAX_ENV__"* ]]; then
      printf '%s' "$jax_env"
      continue
    fi
    line="${line//__NAME__/$NAME}"
    line="${line//__PROCESSES__/$RANKS}"
    line="${line//__PORT__/$PORT}"
    line="${line//__IMAGE__/${IMAGE:-REGISTRY/elastic-jax:latest}}"
    line="${line//__ACCELERATOR__/$ACCELERATOR}"
    line="${line//__CHIPS_PER_HOST__/$CHIPS_PER_HOST}"
    line="${line//__COMMAND__/$command}"
    printf '%s\n' "$line"
  done < "${LAUNCH_DIR}/gke.yaml"
}

if [[ "$RENDER" == 1 ]]; then
  render
  exit 0
fi
if [[ "$EJ_DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_HOSTS; i++)); do
    env_lines=""
    if ((i < RANKS)); then env_lines="$(ej_host_env "$COORDINATOR" "$RANKS" "$i")"; fi
    ej_dry_run_host "$i" "$NUM_HOSTS" "pod ${NAME}-${i}" "$env_lines"
  done
  exit 0
fi
[[ -n "${IMAGE:-}" ]] || ej_die "set IMAGE to a container image with this repository installed"
render | "${KUBECTL:-kubectl}" apply -f -

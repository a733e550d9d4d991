# Shared by the launch scripts (sourced, not run): which hosts run a verb, the per-host environment, dry-runs.
#
# Every script starts `python -m elastic_jax.cli VERB ARGS...` on each host with the same three variables that
# elastic_jax.distributed.initialize() reads: ELASTIC_JAX_COORDINATOR (host:port of process 0),
# ELASTIC_JAX_NUM_PROCESSES and ELASTIC_JAX_PROCESS_ID. With --dry-run a script prints, for each host, the exact
# `env ... python -m elastic_jax.cli ...` line it would run there, and runs nothing.

# Verbs that start jax.distributed and shard one program over every host. Every other verb (importance, eval,
# slice, export-hf, ...) is a single-process program: it runs on the first host only, as a job of one process.
EJ_MULTI_HOST_VERBS=" pretrain elastify "
EJ_PYTHON="${PYTHON:-python}"
EJ_MODULE="elastic_jax.cli"

ej_die() {
  echo "error: $*" >&2
  exit 2
}

# ej_parse_dry_run "$@": sets EJ_DRY_RUN (1 with a leading --dry-run, or DRY_RUN=1 in the environment) and
# EJ_SHIFT (how many arguments the caller should shift).
ej_parse_dry_run() {
  EJ_DRY_RUN="${DRY_RUN:-0}"
  EJ_SHIFT=0
  if [[ "${1:-}" == "--dry-run" ]]; then
    EJ_DRY_RUN=1
    EJ_SHIFT=1
  fi
}

# ej_parse_verb USAGE "$@": sets EJ_VERB and the array EJ_ARGS (the verb's own arguments, passed through as given).
ej_parse_verb() {
  local usage="$1"
  shift
  EJ_VERB="${1:-}"
  if [[ -z "$EJ_VERB" || "$EJ_VERB" == -* ]]; then
    ej_die "missing VERB (pretrain, importance, elastify, eval, ... as for elastic-jax); usage: ${usage}"
  fi
  shift
  EJ_ARGS=("$@")
}

# ej_num_ranks VERB HOSTS: how many processes run VERB on HOSTS hosts.
ej_num_ranks() {
  if [[ "$EJ_MULTI_HOST_VERBS" == *" $1 "* ]]; then echo "$2"; else echo 1; fi
}

# ej_check_count NAME VALUE: VALUE must be a positive integer.
ej_check_count() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || ej_die "$1 must be a positive integer, got '$2'"
}

# ej_jax_env: the JAX / XLA / libtpu / NCCL / PJRT variables of this shell, as NAME=VALUE lines, passed on to every
# host (not TPU_*: those describe the machine they are set on, e.g. its worker id).
ej_jax_env() {
  local name
  for name in $(compgen -e | LC_ALL=C sort); do
    if [[ "$name" =~ ^(JAX_|XLA_|LIBTPU_|NCCL_|PJRT_) ]]; then
      printf '%s=%s\n' "$name" "${!name}"
    fi
  done
}

# ej_host_env COORDINATOR NUM_RANKS RANK: the environment of one process, as NAME=VALUE lines.
ej_host_env() {
  printf 'ELASTIC_JAX_COORDINATOR=%s\n' "$1"
  printf 'ELASTIC_JAX_NUM_PROCESSES=%s\n' "$2"
  printf 'ELASTIC_JAX_PROCESS_ID=%s\n' "$3"
  printf 'PYTHONUNBUFFERED=1\n'
  ej_jax_env
}

# ej_command_line: the command every process runs, shell-quoted on one line.
ej_command_line() {
  local quoted
  printf -v quoted '%q ' "$EJ_PYTHON" -m "$EJ_MODULE" "$EJ_VERB" "${EJ_ARGS[@]}"
  echo "${quoted% }"
}

# ej_env_line: NAME=VALUE lines on stdin -> one shell-quoted `env NAME=VALUE ...` prefix.
ej_env_line() {
  local line out="env"
  while IFS= read -r line; do
    printf -v line '%q' "$line"
    out+=" $line"
  done
  echo "$out"
}

# ej_dry_run_host INDEX NUM_HOSTS HOST ENV_LINES: print what host INDEX would run (or that it stays idle).
ej_dry_run_host() {
  local index="$1" hosts="$2" host="$3" env_lines="$4"
  if [[ -z "$env_lines" ]]; then
    echo "# host ${index} of ${hosts} (${host}): idle; ${EJ_VERB} runs as one process on host 0"
    return
  fi
  echo "# host ${index} of ${hosts} (${host})"
  echo "$(ej_env_line <<< "$env_lines") $(ej_command_line)"
}

# Wait for every started process and exit with the last non-zero status (0 when all succeeded).
ej_wait_all() {
  local status=0 pid
  for pid in "$@"; do
    wait "$pid" || status=$?
  done
  exit "$status"
}

#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM slice: the same command runs on every worker; jax.distributed.initialize()
# finds the other hosts from the TPU metadata (no coordinator to configure).
#
#   launch/tpu_vm.sh my-tpu us-central2-b --config small --workdir gs://bucket/runs/small
#
# Needs: gcloud, and this repository + its dependencies installed on every worker (e.g. `pip install -e .`
# in REPO_DIR, default ~/elastic_jax). A gs:// workdir keeps checkpoints across preemptions.
set -euo pipefail

TPU_NAME="${1:?usage: $0 TPU_NAME ZONE [python -m elastic_jax.train arguments...]}"
ZONE="${2:?usage: $0 TPU_NAME ZONE [arguments...]}"
shift 2
REPO_DIR="${REPO_DIR:-~/elastic_jax}"

printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all \
  --command "cd ${REPO_DIR} && PYTHONUNBUFFERED=1 python -m elastic_jax.train ${ARGS}"

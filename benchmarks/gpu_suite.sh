#!/usr/bin/env bash
# Every GPU measurement of the performance issue in one run (under 12 minutes on one H100), one JSON file.
#   benchmarks/gpu_suite.sh [--out gpu_suite.json] [--smoke] [--steps ssd,train_small,...]
# The steps and what they measure: benchmarks/gpu_suite.py. --smoke runs them at tiny shapes on a CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's elastic_jax
export PYTHONUNBUFFERED=1
# Each step is its own process and the driver starts no jax, so each step may take the GPU's memory as jax does.
exec python "$root/benchmarks/gpu_suite.py" "$@"

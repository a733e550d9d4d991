"""Shared pieces of the training tests: subprocess environment, the tiny run's command line, result readers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from elastic_jax.checkpoint import load_params
from elastic_jax.train.metrics import read_metrics
from tests.compile_flags import FAST_COMPILE

REPO = Path(__file__).resolve().parents[2]
# Compiled programs are shared between the test subprocesses (and across sessions) to keep them fast.
XLA_CACHE = Path(tempfile.gettempdir()) / "elastic_jax_tests_xla_cache"

# The tiny config at test size: batch 4 x 64 tokens, reasoning data only, no eval, a log record every step.
# One schedule length for every run, so that single-device runs of any length share one compiled step.
FAST = (
    "--config.train.seq_len=64", "--config.train.global_batch=4", "--config.train.warmup_steps=2",
    "--config.train.schedule_steps=120",
    "--config.train.eval_every=0", "--config.train.eval_batches=0", "--config.train.eval_prompts=0",
    "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.data.text_weight=0.0",
)


def subprocess_env(devices: int | None = None, xla_flags: str = "", **extra: str) -> dict[str, str]:
    """Environment for a CPU-only JAX subprocess (optionally with `devices` fake devices and extra XLA flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTIC_JAX_", "XLA_FLAGS", "SLURM_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(XLA_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONUNBUFFERED="1")
    if devices:
        xla_flags = f"--xla_force_host_platform_device_count={devices} {xla_flags}"
        # XLA's CPU client sizes its thread pool to max(cores, devices), and every in-flight collective blocks a
        # pool thread until all its participants arrive. One device can have several collectives in flight, so
        # on a 2-core machine 8 fake devices can fill the pool with waiters and deadlock; a larger pool cannot.
        env["PJRT_NPROC"] = str(4 * devices)
    env["XLA_FLAGS"] = f"{FAST_COMPILE} {xla_flags}".strip()
    env.update(extra)
    return env


def train_cmd(workdir: Path | str, *overrides: str, fast: bool = True) -> list[str]:
    """`python -m elastic_jax.train --config tiny --workdir W ...` with the test-size overrides."""
    return [sys.executable, "-m", "elastic_jax.train", "--config", "tiny", "--workdir", str(workdir),
            *(FAST if fast else ()), *overrides]


def run_train(workdir: Path | str, *overrides: str, devices: int | None = None, timeout: float = 240,
              **env: str) -> subprocess.CompletedProcess:
    """Run a training subprocess to completion; fail the test with its output if it exits non-zero."""
    proc = subprocess.run(train_cmd(workdir, *overrides), cwd=REPO, env=subprocess_env(devices, **env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"training exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def losses(workdir: Path | str) -> dict[int, float]:
    """Train loss per step (the last record of a step wins: a resumed run repeats steps)."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def final_params(workdir: Path | str) -> dict:
    return load_params(Path(workdir) / "checkpoints")


def assert_trees_equal(a: dict, b: dict, path: str = "") -> None:
    """Bitwise equality of two nested dicts of arrays."""
    assert a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
    for key in a:
        if isinstance(a[key], dict):
            assert_trees_equal(a[key], b[key], f"{path}/{key}")
        else:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape, f"{path}/{key}"
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{path}/{key} differs"

"""An installed libtpu (the tpu-plan extra) must not make a host without a TPU start a TPU backend in a process that
elastic_jax runs (tune_process, which the command line calls first), even when jax was imported before."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

TUNED = "import os, jax, elastic_jax; elastic_jax.tune_process(); print(os.environ.get('JAX_PLATFORMS'), " \
        "jax.default_backend())"
CLI = "import os, sys; from elastic_jax.cli import main; main(['params', '--config', 'tiny']); " \
      "print(os.environ.get('JAX_PLATFORMS'))"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


libtpu_without_a_tpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None or bool(glob.glob("/dev/accel*")),
                                          reason="needs libtpu installed (the peers extra) on a host without a TPU")


@libtpu_without_a_tpu
def test_libtpu_without_a_tpu_starts_no_tpu_backend():
    proc = _run(TUNED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
    assert "libtpu" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr


@libtpu_without_a_tpu
def test_the_command_line_keeps_jax_off_libtpu():
    proc = _run(CLI)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "cpu"

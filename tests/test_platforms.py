"""An installed libtpu (the tpu-plan extra) must not make a host without a TPU start a TPU backend."""

import importlib.util
import os
import subprocess
import sys

import pytest

CODE = "import os, elastic_jax, jax; print(os.environ.get('JAX_PLATFORMS'), jax.default_backend())"


def _run(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run([sys.executable, "-c", CODE], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
@pytest.mark.skipif(bool(__import__("glob").glob("/dev/accel*")), reason="a TPU host")
def test_libtpu_without_a_tpu_starts_no_tpu_backend():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
    assert "libtpu" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr


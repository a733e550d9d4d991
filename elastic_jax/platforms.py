"""Keep jax away from an installed libtpu on a host without a TPU.

libtpu comes with the `tpu-plan` (and `peers`) extra so that `elastic-jax plan` can compile for TPU topologies
from any host. jax then tries to start a TPU backend in every process, which on a CPU or GPU host prints a
screen of libtpu errors before falling back. With no TPU device file present and JAX_PLATFORMS unset, the
TPU backend is left out (compile-only topologies do not need it); a user's JAX_PLATFORMS is respected. It is a
process-wide setting, made by the command line (`elastic_jax.tune_process()`), never on import.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# The JAX_PLATFORMS value this module set (None: the user's own, or none): a benchmark's recorded command leaves it out.
SET_BY_US: str | None = None


def skip_absent_tpu() -> str | None:
    """Set JAX_PLATFORMS without "tpu" when libtpu is installed but this host has no TPU; returns what was set."""
    if os.environ.get("JAX_PLATFORMS") or not _has("libtpu"):
        return None
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return None  # a TPU host
    cuda = any(_has(f"jax_cuda{v}_plugin") for v in (12, 13)) and bool(glob.glob("/dev/nvidia[0-9]*"))
    global SET_BY_US
    os.environ["JAX_PLATFORMS"] = platforms = SET_BY_US = "cuda,cpu" if cuda else "cpu"
    if "jax" in sys.modules:  # jax read the variable on import; its flag still counts until a backend starts
        sys.modules["jax"].config.update("jax_platforms", platforms)
    return platforms


__all__ = ["skip_absent_tpu"]

"""The clusters a plan is for: a target name (`v5p-128`, `v5p:2x2x1`, `16xH100`) -> device count, memory per
device and TPU topology, and the devices of a TPU topology from libtpu's compile-only client (no TPU needed)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from elastic_jax.config import ConfigError

GiB = 1024**3
# HBM per chip (TPU) or per GPU, in bytes.
TPU_HBM = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
GPU_HBM = {"H100": 80 * 10**9, "H200": 141 * 10**9, "A100-80": 80 * 10**9, "A100-40": 40 * 10**9,
           "A100": 80 * 10**9, "B200": 180 * 10**9}
# TensorCores per chip: v4 and v5p slices are named by cores (v5p-128 = 64 chips), v5e / v6e by chips.
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}


@dataclasses.dataclass(frozen=True)
class Target:
    """A cluster to plan for: platform, device count, HBM per device, and the libtpu topology name (TPU)."""

    name: str
    platform: str  # "tpu" or "gpu"
    num_devices: int
    hbm_bytes: int
    topology: str | None = None

    @property
    def devices_per_process(self) -> int:
        """One process per host: 4 chips on a TPU host, 8 GPUs on a GPU host (fewer when the target is smaller)."""
        return min(self.num_devices, 4 if self.platform == "tpu" else 8)


def _tpu_grid(kind: str, chips: int) -> str:
    """A topology grid with `chips` chips: 3-D (AxBxC, powers of two, most even) for v4/v5p, 2-D otherwise."""
    dims = [1, 1, 1] if CORES_PER_CHIP[kind] == 2 else [1, 1]
    rest = chips
    while rest > 1:
        if rest % 2:
            raise ConfigError(f"--target: {chips} {kind} chips is not a power of two", section="target")
        dims[dims.index(min(dims))] *= 2
        rest //= 2
    if len(dims) == 3 and dims[0] * dims[1] < 4:  # a v4/v5p host holds 2x2x1 chips
        dims = sorted(dims, reverse=True)
    return "x".join(str(d) for d in sorted(dims))


def parse_target(text: str) -> Target:
    """`v5p-128` (cores for v4/v5p, chips for v5e/v6e), `v5p:2x2x1` (a topology), or `<n>x<GPU>` (`8xH100`)."""
    gpu = re.fullmatch(r"(\d+)x([A-Za-z0-9-]+)", text)
    if gpu and gpu.group(2) in GPU_HBM:
        n = int(gpu.group(1))
        return Target(text, "gpu", n, GPU_HBM[gpu.group(2)])
    topo = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)", text)
    named = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", text)
    if topo:
        kind, grid = topo.group(1), topo.group(2)
        chips = math.prod(int(d) for d in grid.split("x"))
    elif named:
        kind, count = named.group(1), int(named.group(2))
        if count % CORES_PER_CHIP[kind]:
            raise ConfigError(f"--target: {text} must name a whole number of chips", section="target")
        chips = count // CORES_PER_CHIP[kind]
        grid = _tpu_grid(kind, chips)
    else:
        raise ConfigError(f"--target: {text!r} is not a target; use a TPU slice (v5p-128, v5e-8, v6e-16), a TPU "
                          f"topology (v5p:2x2x1) or GPUs <n>x<model> with model one of {sorted(GPU_HBM)}",
                          section="target")
    return Target(text, "tpu", chips, TPU_HBM[kind], f"{kind}:{grid}")


@contextlib.contextmanager
def _scoped_env(**values: str) -> Iterator[None]:
    """Environment variables set (where unset) for the duration of the block, then restored."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# libtpu, started on a host that is no TPU worker, sets these in the C environment (not in os.environ) to warnings
# such as "WARNING: could not determine TPU worker number"; every process started afterwards would inherit them and
# look like a TPU pod worker (distributed.detect_cluster), e.g. a pretraining run started from the same process.
LIBTPU_GUESSES = ("TPU_WORKER_ID", "CLOUD_TPU_TASK_ID", "CLOUD_TPU_ACCELERATOR_TYPE", "TPU_ACCELERATOR_TYPE")


def _unset_libtpu_guesses() -> None:
    for name in LIBTPU_GUESSES:
        if name not in os.environ:  # set by libtpu, not by the user
            os.unsetenv(name)


def tpu_devices(target: Target) -> list[Any]:
    """The devices of a TPU topology, from libtpu's compile-only client (no TPU needed)."""
    try:
        from jax.experimental import topologies

        # Only while libtpu starts: left set, TPU_WORKER_HOSTNAMES would make this process (and every process it
        # starts) look like a TPU pod worker to distributed.detect_cluster.
        with _scoped_env(ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_WORKER_HOSTNAMES="localhost"):
            devices = list(topologies.get_topology_desc(target.topology, "tpu").devices)
        _unset_libtpu_guesses()
        return devices
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ConfigError("--target: TPU plans need libtpu; pip install 'elastic_jax[tpu-plan]'",
                          section="target") from err
    except RuntimeError as err:
        if "libtpu" in str(err).lower() or "tpu" in str(err).lower():
            raise ConfigError(f"--target {target.name}: libtpu could not describe topology {target.topology}: "
                              f"{str(err).splitlines()[0]} (pip install 'elastic_jax[tpu-plan]')",
                              section="target") from err
        raise

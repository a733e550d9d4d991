"""The clusters a plan is for: a target name (`v5p-128`, `v5p:2x2x1`, `16xH100`) -> device count, memory per
device and TPU topology, and the devices of a TPU topology from libtpu's compile-only client (no TPU needed).

Also what a GPU plan compiles on (`gpu_compile_env`: XLA's GPU compiler for a mocked multi-host topology on a GPU
host, fake CPU devices elsewhere), and the host memory of getting the parent onto a target's devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from elastic_jax.config import ConfigError
from elastic_jax.model.hybrid import model_declarations

GiB = 1024**3
# HBM per chip (TPU) or per GPU, in bytes.
TPU_HBM = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
GPU_HBM = {"H100": 80 * 10**9, "H200": 141 * 10**9, "A100-80": 80 * 10**9, "A100-40": 40 * 10**9,
           "A100": 80 * 10**9, "B200": 180 * 10**9}
# TensorCores per chip: v4 and v5p slices are named by cores (v5p-128 = 64 chips), v5e / v6e by chips.
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# Chips of the largest single-host slice (v4-8 / v5p-8: a 2x2x1 host; v5e-8 / v6e-8: a 2x4 host). Larger slices
# are built of 2x2x1 hosts, libtpu's default bounds.
HOST_CHIPS = {"v4": 4, "v5p": 4, "v5e": 8, "v6e": 8}
MULTI_HOST_BOUNDS = (2, 2, 1)
GPUS_PER_HOST = 8
# The targets `plan` is tested on (tests/test_plan.py plans each): every single-host TPU slice, multi-host
# slices of each kind, and GPU nodes.
LISTED_TARGETS = ("v4-8", "v5p-8", "v5p-16", "v5p-128", "v5e-1", "v5e-4", "v5e-8", "v5e-16", "v6e-1", "v6e-4",
                  "v6e-8", "v6e-16", "8xH100", "16xH100", "8xH200", "8xA100-80")


class PlanError(ConfigError):
    """A target that cannot be planned (a topology libtpu refuses, a missing libtpu): one line, naming --target."""

    def __init__(self, message: str):
        super().__init__(message)  # the message names --target itself


@dataclasses.dataclass(frozen=True)
class Target:
    """A cluster to plan for: platform, device count, HBM per device, and for TPUs the libtpu topology name and
    the chips of one host (libtpu's chips_per_host_bounds)."""

    name: str
    platform: str  # "tpu" or "gpu"
    num_devices: int
    hbm_bytes: int
    topology: str | None = None
    chips_per_host: tuple[int, int, int] | None = None

    @property
    def devices_per_process(self) -> int:
        """One process per host: a TPU host's chips, 8 GPUs on a GPU host (fewer when the target is smaller)."""
        per_host = math.prod(self.chips_per_host) if self.chips_per_host else GPUS_PER_HOST
        return min(self.num_devices, per_host)


def _tpu_grid(kind: str, chips: int) -> str:
    """A topology grid with `chips` chips: 3-D for v4/v5p (2x2x1 for one host, then AxBxC ascending, most even),
    2-D for v5e/v6e (1x1, 2x2, 2x4, 4x4, 4x8, ...)."""
    dims = [1, 1, 1] if CORES_PER_CHIP[kind] == 2 else [1, 1]
    rest = chips
    while rest > 1:
        if rest % 2:
            raise ConfigError(f"--target: {chips} {kind} chips is not a power of two", section="target")
        dims[dims.index(min(dims))] *= 2
        rest //= 2
    # one v4/v5p host is 2x2x1: a slice of up to 4 chips lies in the first two axes
    order = sorted(dims, reverse=len(dims) == 3 and chips <= HOST_CHIPS[kind])
    return "x".join(str(d) for d in order)


def _host_bounds(kind: str, grid: str) -> tuple[int, int, int]:
    """libtpu's chips_per_host_bounds: the whole grid when one host holds it, else 2x2x1 hosts."""
    dims = [int(d) for d in grid.split("x")]
    if math.prod(dims) > HOST_CHIPS[kind]:
        return MULTI_HOST_BOUNDS
    return (*dims, *[1] * (3 - len(dims)))  # type: ignore[return-value]


def parse_target(text: str) -> Target:
    """`v5p-128` (cores for v4/v5p, chips for v5e/v6e), `v5p:2x2x1` (a topology), or `<n>x<GPU>` (`8xH100`)."""
    gpu = re.fullmatch(r"(\d+)x([A-Za-z0-9-]+)", text)
    if gpu and gpu.group(2) in GPU_HBM:
        n = int(gpu.group(1))
        if n < 1:
            raise PlanError(f"--target {text}: at least one GPU")
        return Target(text, "gpu", n, GPU_HBM[gpu.group(2)])
    topo = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", text)
    named = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", text)
    if topo:
        kind, grid = topo.group(1), topo.group(2)
        chips = math.prod(int(d) for d in grid.split("x"))
    elif named:
        kind, count = named.group(1), int(named.group(2))
        if count < 1 or count % CORES_PER_CHIP[kind]:
            raise ConfigError(f"--target: {text} must name a whole number of chips", section="target")
        chips = count // CORES_PER_CHIP[kind]
        grid = _tpu_grid(kind, chips)
    else:
        raise ConfigError(f"--target: {text!r} is not a target; use a TPU slice (v5p-128, v5e-8, v6e-16), a TPU "
                          f"topology (v5p:2x2x1) or GPUs <n>x<model> with model one of {sorted(GPU_HBM)}",
                          section="target")
    return Target(text, "tpu", chips, TPU_HBM[kind], f"{kind}:{grid}", _host_bounds(kind, grid))


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
    """The devices of a TPU topology (one per chip), from libtpu's compile-only client (no TPU needed). A topology
    libtpu refuses, or a missing libtpu, is one PlanError."""
    try:
        from jax.experimental import topologies
    except ImportError as err:  # pragma: no cover - depends on the install
        raise PlanError("TPU plans need libtpu; pip install 'elastic_jax[tpu-plan]'") from err
    options: dict[str, Any] = {"chips_per_host_bounds": target.chips_per_host}
    if CORES_PER_CHIP.get(target.topology.split(":")[0]) == 2:
        options["chip_config_name"] = "megacore"  # one device per chip (both TensorCores), as slices are run
    try:
        # Only while libtpu starts: left set, TPU_WORKER_HOSTNAMES would make this process (and every process it
        # starts) look like a TPU pod worker to distributed.detect_cluster.
        with _scoped_env(ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_WORKER_HOSTNAMES="localhost"):
            devices = list(topologies.get_topology_desc(target.topology, "tpu", **options).devices)
    except RuntimeError as err:  # jax.errors.JaxRuntimeError: libtpu's INVALID_ARGUMENT, or no TPU backend at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "" if "INVALID_ARGUMENT" in first else " (pip install 'elastic_jax[tpu-plan]')"
        raise PlanError(f"--target {target.name}: libtpu refuses topology {target.topology} with "
                        f"chips_per_host_bounds {'x'.join(map(str, target.chips_per_host))}: {first}{hint}; "
                        f"slices that plan: {', '.join(t for t in LISTED_TARGETS if not t[0].isdigit())}") from None
    finally:
        _unset_libtpu_guesses()
    if len(devices) != target.num_devices:
        raise PlanError(f"--target {target.name}: libtpu describes {target.topology} as {len(devices)} devices, "
                        f"not {target.num_devices} chips")
    return devices


# ---- GPU targets: XLA's GPU compiler on a GPU host, CPU stand-ins elsewhere ------------------------------------
def local_gpus() -> int:
    """GPUs of this host that jax sees (0 on a host without one). Starts jax's default backend."""
    return jax.local_device_count() if jax.default_backend() == "gpu" else 0


def gpu_compile_env(target: Target, environ: Mapping[str, str], host_gpus: int) -> dict[str, str]:
    """The environment of the process that compiles a GPU plan (its device count is fixed when jax starts).

    With `host_gpus` > 0 (a GPU host): XLA's GPU compiler for the target as a mocked topology
    (`jax_mock_gpu_topology`, "slices x hosts x GPUs per host", mocked NCCL), `gcd(n, host_gpus)` real GPUs per
    mocked host, so 16 x H100 on one H100 is "1x16x1" and on an 8-GPU node "1x2x8"; nothing is allocated beyond
    what compiling needs. Without: `n` fake CPU devices standing in for the GPUs (an estimate)."""
    env = dict(environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if host_gpus > 0:
        per_host = math.gcd(target.num_devices, host_gpus)
        env.update(JAX_MOCK_GPU_TOPOLOGY=f"1x{target.num_devices // per_host}x{per_host}",
                   XLA_PYTHON_CLIENT_PREALLOCATE="false")
        if per_host < host_gpus:  # a mocked host has as many GPUs as this one shows the compiling process
            visible = ",".join(str(i) for i in range(per_host))
            env.update(JAX_CUDA_VISIBLE_DEVICES=visible, JAX_ROCM_VISIBLE_DEVICES=visible)
    else:
        env.pop("JAX_MOCK_GPU_TOPOLOGY", None)
        env["JAX_PLATFORMS"] = "cpu"
        flags.append(f"--xla_force_host_platform_device_count={target.num_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def host_memory(model: Any, tgt: Target, programs: dict[str, Any]) -> dict[str, Any]:
    """Peak host RAM per process (bytes) of getting the parent onto the devices, by path (accounting, exact from
    the shapes and the compiled plan's shardings):
    - `import_hf`: `elastic-jax import-hf` holds one tensor at a time (the largest, in fp32, is the bound);
    - `restore_sharded`: `model_io.load_model(path, mesh=...)` restores the teacher and the student straight into
      their shardings, each process reading only its devices' shards: these bytes, on their way to device memory
      (Orbax keeps at most its restore_concurrent_gb of them in host memory at once);
    - `whole_parent`: the parent in fp32, what `elastify` holds on every host when its --parent is a Hugging Face
      directory (a checkpoint, e.g. import-hf's output, is restored sharded and ranked and permuted on the mesh)."""
    sizes = [math.prod(d.shape) * 4 for d in model_declarations(model)]
    best = next((p["best"] for p in programs.values() if p.get("best")), None)
    local = tgt.devices_per_process
    sharded = None if best is None else (best["bytes"]["parameters"] + best["bytes"]["teacher"]) * local
    return {"processes": tgt.num_devices // local, "devices_per_process": local, "import_hf": max(sizes),
            "restore_sharded": sharded, "whole_parent": sum(sizes)}


# ---- fitting a compiled program into the target's memory ----------------------------------------------------
def batch_shards(mesh: Mapping[str, int]) -> int:
    """How many ways a mesh splits the global batch's rows: its data x fsdp x expert axes (distributed.py's batch
    axes)."""
    return math.prod(mesh.get(axis, 1) for axis in ("data", "fsdp", "expert"))


def micro_batches_to_fit(result: dict[str, Any], hbm: int) -> int | None:
    """The smallest train.micro_batches that would fit, scaling the compiled temporaries down with the rows alive
    at once (an estimate), or None when even one row per device at a time would not."""
    fixed = result["total_bytes"] - result["bytes"]["activations_and_temporaries"]
    compiled = result.get("micro_batches", 1)
    local_rows = result["global_batch"] // batch_shards(result["mesh"])
    per_micro = local_rows // compiled
    for k in (d for d in range(2, per_micro + 1) if per_micro % d == 0):
        if fixed + result["bytes"]["activations_and_temporaries"] / k <= hbm:
            return k * compiled
    return None


def fit_advice(result: dict[str, Any], hbm: int) -> str:
    """Fits as compiled, or the gradient-accumulation count (train.micro_batches) estimated to fit."""
    if result["total_bytes"] <= hbm:
        return "fits as compiled"
    said = f"XLA refused to compile it: {result['compiler_refusal']}; " if "compiler_refusal" in result else ""
    fixed = result["total_bytes"] - result["bytes"]["activations_and_temporaries"]
    if fixed > hbm:
        return (f"{said}does not fit: parameters, optimizer state and teacher alone need {fixed / GiB:.1f} GiB per "
                "device; use more devices or a mesh that shards them further")
    k = micro_batches_to_fit(result, hbm)
    if k is None:
        return f"{said}does not fit even with one row per device at a time"
    return (f"{said}estimated to fit with train.micro_batches={k} (the same global batch, gradients accumulated "
            f"over {k} slices; temporaries scaled from the compiled {result.get('micro_batches', 1)}, so compile "
            "with it to check)")


def smallest_change(best: dict[str, Any], target: Target) -> dict[str, Any]:
    """What would make the best compiled program fit `target`, with each alternative's bytes per device from the
    plan's figures: the stored state (parameters, optimizer state, teacher) is exact from the shardings, so moving or
    halving a kind of it is exact; everything else (batch, activations and temporaries, gradients among them, and
    outputs) stays as compiled, an upper bound where the change would shrink it too (bf16 weights gather in bf16).
    In order: the optimizer state offloaded to host memory; bf16 master weights (parameters and frozen teacher at
    half their fp32 bytes, AdamW's moments in fp32); both; more devices (whole 8-GPU hosts, or a TPU slice doubled
    until it fits), the state spread over them as over these. `smallest` is the first that fits, or None."""
    b, total, hbm, n = best["bytes"], best["total_bytes"], target.hbm_bytes, target.num_devices
    weights, moments = b["parameters"] + b["teacher"], b["optimizer_state"]
    options = [("optimizer state offloaded to host memory", total - moments),
               ("bf16 master weights and teacher", total - weights // 2),
               ("bf16 master weights and teacher, optimizer state offloaded", total - weights // 2 - moments)]
    state = weights + moments
    rest = total - state
    if rest < hbm:
        need = math.ceil(state * n / (hbm - rest))
        if target.platform == "gpu":
            more = -(-max(need, n + 1) // GPUS_PER_HOST) * GPUS_PER_HOST
        else:
            more = 2 ** math.ceil(math.log2(max(need, 2 * n)))
        options.append((f"{more} devices instead of {n}", rest + math.ceil(state * n / more)))
    rows = [{"change": change, "total_bytes": int(t), "fits": t <= hbm} for change, t in options]
    smallest = next((r["change"] for r in rows if r["fits"]), None)
    note = ("" if rest < hbm else
            f"the batch, activations, temporaries and outputs alone need {rest / GiB:.1f} GiB per device of the "
            f"{hbm / GiB:.1f}: no change to the stored state fits; the compiled temporaries must shrink (a mesh that "
            "shards what each device gathers, e.g. the expert axis, or fewer rows at a time)")
    return {"smallest": smallest, "options": rows, "note": note}

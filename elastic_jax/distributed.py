"""Device mesh, logical-axis sharding rules, multi-process start-up and global batches.

The mesh has four named axes (data, fsdp, tensor, expert). Every parameter gets a tuple of *logical* axis
names from its declaration (`logical_axes`, elastic_jax/model/declare.py); `SHARDING_RULES` maps logical names
to mesh axes, as data, so a different parallelism layout is a different rule table, not different model code.
With an `expert` axis the stacked expert weights are split by expert over it (and by embedding over fsdp), every
other weight by embedding over fsdp x expert, and batch rows over all three (expert parallelism,
model/expert_parallel.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elastic_jax.config import ConfigError
from elastic_jax.model.declare import UndeclaredParamError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor", "expert")
DEFAULT_MESH = {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}

# (logical axis, mesh axes): the first rule whose mesh axes all divide the dimension and are still unused wins.
SHARDING_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("embed", ("fsdp", "expert")),  # weights without an experts axis: FSDP over the expert axis too
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mamba_inner", "tensor"),
    ("mamba_heads", "tensor"),
    ("experts", "expert"),
    ("expert_mlp", "tensor"),
)



@functools.lru_cache(maxsize=1)
def _declared_axes() -> dict[str, tuple[str | None, ...]]:
    """Sharding names of every declared parameter by its path below `layers_<i>/` (the model's own parameters
    keep their path): the `shard` name of each declared dimension. Names do not depend on sizes, so one
    config with every block type gives them all."""
    from elastic_jax.config import ModelConfig
    from elastic_jax.model.hybrid import model_declarations

    table: dict[str, tuple[str | None, ...]] = {}
    for decl in model_declarations(ModelConfig(pattern="M*E-")):
        key, axes = _relative(decl.name), tuple(d.shard for d in decl.dims)
        if table.setdefault(key, axes) != axes:
            raise AssertionError(f"declarations disagree on the sharding of {key}: {table[key]} and {axes}")
    return table


def _relative(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[1:]) if parts[0].startswith("layers_") else path


class MeshError(ConfigError):
    """The requested mesh does not fit the available devices."""


def check_mesh_config(mesh_cfg: Mapping[str, Any] | None) -> dict[str, int]:
    """All four axis sizes (defaults filled in), checked for names and values; devices are not consulted."""
    sizes = dict(DEFAULT_MESH)
    unknown = sorted(set(mesh_cfg or {}) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"mesh: unknown axis name(s) {unknown}; allowed: {list(MESH_AXES)}")
    sizes.update(dict(mesh_cfg or {}))
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or (v != -1 and v < 1)}
    if bad or sum(v == -1 for v in sizes.values()) > 1:
        raise MeshError(f"mesh: sizes must be positive integers with at most one -1 (auto), got {sizes}")
    return sizes


def mesh_shape(mesh_cfg: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
    """Axis sizes of the mesh, with at most one -1 filled in so the product equals `num_devices`."""
    sizes = check_mesh_config(mesh_cfg)
    auto = [k for k, v in sizes.items() if v == -1]
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if auto:
        if num_devices % fixed:
            raise MeshError(f"mesh: the fixed axes {sizes} multiply to {fixed}, which does not divide the "
                            f"{num_devices} available devices; choose sizes whose product divides {num_devices}")
        sizes[auto[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh: the axis sizes {sizes} multiply to {fixed} but there are {num_devices} devices; "
                        "set one axis to -1 to fill it automatically")
    return sizes


def make_mesh(mesh_cfg: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes MESH_AXES over `devices` (default: all global devices), one -1 auto-filled."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


@contextlib.contextmanager
def tracing_on(mesh: Mesh | None) -> Iterator[None]:
    """Inside a traced step: `mesh` as the current abstract mesh, so the layers that run a `shard_map` under a mesh
    (the Pallas TPU SSD kernel, MoE routing on each device's own rows: model/local_rows.py) see it."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def _key_name(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def path_str(path: Sequence[Any]) -> str:
    """'layers_0/mixer/in_x/kernel' for a jax key path."""
    return "/".join(_key_name(p) for p in path)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axis names of the parameter at `path` ('layers_2/mixer/up_proj'), from its declaration
    (elastic_jax/model/declare.py); an undeclared parameter raises UndeclaredParamError."""
    axes = _declared_axes().get(_relative(path))
    if axes is None or len(axes) != ndim:
        got = "no declaration" if axes is None else f"a declaration of rank {len(axes)}, not {ndim}"
        raise UndeclaredParamError(f"sharding: parameter {path!r} has {got}; declare it with the module that "
                                   "creates it (elastic_jax/model/declare.py)")
    return axes


def _as_tuple(mesh_axes: Any) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = SHARDING_RULES) -> PartitionSpec:
    """PartitionSpec from logical axes: the first rule per axis whose (unused) mesh axes divide the dimension."""
    used: set[str] = set()
    spec: list[Any] = []
    for name, dim in zip(axes, shape, strict=True):
        choice: tuple[str, ...] = ()
        for logical, mesh_axes in rules:
            cand = tuple(a for a in _as_tuple(mesh_axes) if mesh.shape[a] > 1)
            if logical != name or not cand or used & set(cand):
                continue
            if dim % math.prod(mesh.shape[a] for a in cand) == 0:
                choice = cand
                break
        used |= set(choice)
        spec.append(None if not choice else choice[0] if len(choice) == 1 else choice)
    return PartitionSpec(*spec)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = SHARDING_RULES) -> Any:
    """NamedShardings for a parameter pytree (arrays or ShapeDtypeStructs), from `logical_axes` and `rules`."""
    def one(path, leaf):
        shape = tuple(leaf.shape)
        return NamedSharding(mesh, logical_to_spec(logical_axes(path_str(path), len(shape)), shape, mesh, rules))
    return jax.tree_util.tree_map_with_path(one, params)


def tree_shardings_like(tree: Any, params: Any, param_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that embeds parameter-shaped subtrees (optimizer state): match by path suffix."""
    by_path = {tuple(_key_name(p) for p in path): (leaf.shape, s) for (path, leaf), s in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(param_sharding), strict=True)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        keys = tuple(_key_name(p) for p in path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated
    return jax.tree_util.tree_map_with_path(one, tree)


def logical_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int],
                     rules: Sequence[tuple[str, Any]] = SHARDING_RULES) -> NamedSharding:
    """Sharding of an activation named by logical axes, e.g. logits ("batch", None, "vocab"): rows over the
    batch mesh axes, the vocabulary over the tensor axis, by the same rules as the parameters."""
    return NamedSharding(mesh, logical_to_spec(tuple(axes), tuple(shape), mesh, rules))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = SHARDING_RULES,
                   global_batch: int | None = None) -> NamedSharding:
    """Sharding of [batch, length] arrays: rows split over the batch mesh axes."""
    dim = global_batch if global_batch is not None else math.prod(mesh.shape.values())
    return NamedSharding(mesh, logical_to_spec(("batch", None), (dim, 1), mesh, rules))


def global_from_host(tree: Any, shardings: Any) -> Any:
    """Global jax Arrays from host arrays that every process holds in full (a sharding, or a tree of them):
    each device receives only its own block (a replicated array: all of it)."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.tree.map(one, tree, shardings)


def global_batch_from_local(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Global jax Arrays from each process's rows (process i holds rows [i*n, (i+1)*n) of the global batch)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# ---- multi-process start-up --------------------------------------------------------------------------------
ENV_COORDINATOR = "ELASTIC_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "ELASTIC_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "ELASTIC_JAX_PROCESS_ID"
TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID")


def detect_cluster(env: Mapping[str, str] | None = None) -> str:
    """Which start-up applies: 'explicit' (ELASTIC_JAX_* vars), 'slurm', 'tpu' or 'single'."""
    env = os.environ if env is None else env
    if env.get(ENV_COORDINATOR) or env.get(ENV_NUM_PROCESSES):
        return "explicit"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if any(env.get(k) for k in TPU_ENV_VARS) or (env is os.environ and os.path.exists("/dev/accel0")):
        return "tpu"
    return "single"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, env: Mapping[str, str] | None = None) -> str:
    """Start jax.distributed from arguments, ELASTIC_JAX_* variables, SLURM or a TPU pod; no-op for one process.

    Returns the kind of start-up used. Call it before anything touches a device.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return "initialized"
    coordinator = coordinator or env.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _int_env(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int_env(env, ENV_PROCESS_ID)
    if coordinator or num_processes is not None:
        if not coordinator or num_processes is None or process_id is None:
            raise ConfigError(f"distributed start-up needs all of {ENV_COORDINATOR} (host:port), "
                              f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}; got coordinator={coordinator!r}, "
                              f"num_processes={num_processes!r}, process_id={process_id!r}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"{ENV_PROCESS_ID}={process_id} must be in [0, {ENV_NUM_PROCESSES}={num_processes})")
        if num_processes == 1:
            return "single"
        jax.distributed.initialize(coordinator, num_processes, process_id)
        kind = "explicit"
    else:
        kind = detect_cluster(env)
        if kind == "single":
            return kind
        jax.distributed.initialize()  # jax's own SLURM / Cloud TPU detection fills in the rest
    log.info("jax.distributed (%s): process %d of %d, %d local / %d global devices", kind, jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return kind


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None

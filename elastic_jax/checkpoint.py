"""The single Orbax checkpoint of a run: train state, data-iterator state and metadata, one directory per step.

Layout: `<dir>/<step>/{state, data, metadata}`. `state` is the {step, params, opt_state} pytree (OCDBT +
zarr, written by Orbax in a temporary directory and renamed when complete, so a step directory is either
whole or absent); `data` the per-process data-iterator states (JSON); `metadata` the model config, tokenizer,
experiment config and a free-form "elastic" field (JSON). Arrays are chunked finely enough that
`restore_slice` reads a prefix sub-model with tensorstore partial reads, touching about its own bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils

from elastic_jax import schema
from elastic_jax.config import ConfigError
from elastic_jax.distributed import path_str
from elastic_jax.paths import unflatten

log = logging.getLogger(__name__)
ITEMS = ("state", "data", "metadata")
FORMAT_VERSION = 1
UNREADABLE_DIR = "unreadable"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(schema.Section):
    """How often to save, how many to keep, and how arrays are chunked on disk.

    Arrays are split into chunks of about `array_bytes / chunk_pieces**rank` bytes (at least min_chunk_bytes)
    and expert tensors into one chunk row per expert, so a prefix slice of a parameter reads about its own
    share of the bytes (see `restore_slice`).
    """

    SECTION = "checkpoint"

    every_steps: int = 100  #: steps between checkpoints (0: only at the end)
    max_to_keep: int = 3  #: checkpoints kept on disk
    async_save: bool = True  #: write checkpoints in the background while training goes on
    chunk_pieces: int = 16  #: chunks per array axis on disk
    min_chunk_bytes: int = 4096  #: arrays up to this size are one chunk

    def __post_init__(self):
        for name, low in (("every_steps", 0), ("max_to_keep", 1), ("chunk_pieces", 1), ("min_chunk_bytes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"must be an integer >= {low}, got {value!r}", name, self.SECTION)


class CheckpointMismatchError(ConfigError):
    """A checkpoint was written for another model (config fields or parameter shapes differ) or another run."""


class _QuietChunkWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "target_byte_size too small" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietChunkWarning())


def chunk_save_args(leaf: Any, cfg: CheckpointConfig) -> ocp.SaveArgs:
    """SaveArgs whose chunks split every axis into ~chunk_pieces parts (experts: one chunk row each)."""
    shape = tuple(leaf.shape)
    nbytes = math.prod(shape) * np.dtype(leaf.dtype).itemsize
    if nbytes <= cfg.min_chunk_bytes or not shape:
        return ocp.SaveArgs()
    shard_axes = (0,) if len(shape) == 3 else ()
    rest = [d for i, d in enumerate(shape) if i not in shard_axes and d > 1]
    per_row = nbytes // (shape[0] if shard_axes else 1)
    target = max(cfg.min_chunk_bytes, per_row // (cfg.chunk_pieces ** max(len(rest), 1)))
    return ocp.SaveArgs(chunk_byte_size=int(target), shard_axes=shard_axes)


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of `tree`, carrying the given target shardings (for restoring onto another mesh)."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.array([data.size], np.int32))))
    padded = np.zeros(size, np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), size)
    return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in rows]


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'field (checkpoint X, now Y)' for every field whose value differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k} (checkpoint {saved.get(k)!r}, now {current.get(k)!r})" for k in keys
            if saved.get(k) != current.get(k)]


def shape_diff(saved: Any, target: Any) -> list[str]:
    """'path: checkpoint shape S, now T' for every array whose shape (or presence) differs."""
    def flat(tree):
        return {path_str(p): tuple(getattr(x, "shape", ())) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    a, b = flat(saved), flat(target)
    return [f"{k}: checkpoint {a.get(k, 'missing')}, now {b.get(k, 'missing')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class Checkpointer:
    """Save and restore one run's checkpoints in `directory` (keep-last-N, async, atomic, fall back when unreadable)."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig | None = None):
        self.directory = Path(directory).absolute()
        self.cfg = cfg or CheckpointConfig()
        options = ocp.CheckpointManagerOptions(max_to_keep=self.cfg.max_to_keep, create=True,
                                               enable_async_checkpointing=self.cfg.async_save,
                                               cleanup_tmp_directories=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "metadata": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Mapping[str, Any], data_state: Any, metadata: Mapping[str, Any]) -> bool:
        """Start saving `state` ({step, params, opt_state}) at `step`; returns False if that step exists.

        Collective over processes: `data_state` is this process's iterator state (gathered here).
        """
        data = {"process_count": jax.process_count(), "states": gather_json(data_state)}
        if step in self.manager.all_steps():
            return False
        save_args = jax.tree.map(lambda x: chunk_save_args(x, self.cfg), dict(state))
        meta = {"format": FORMAT_VERSION, **metadata}
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(dict(state), save_args=save_args),
            data=ocp.args.JsonSave(data), metadata=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_metadata(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"])

    def check_compatible(self, step: int, metadata: Mapping[str, Any], abstract_state: Any) -> None:
        """Raise CheckpointMismatchError naming differing model-config fields or parameter shapes."""
        saved = self.read_metadata(step)
        where = f"checkpoint step {step} in {self.directory}"
        diff = config_diff(saved.get("model", {}), metadata.get("model", {}))
        if diff:
            raise CheckpointMismatchError(f"{where} was written for a different model config; differing fields: "
                                          + "; ".join(diff))
        if "run" in saved and "run" in metadata:  # the settings a resumed run must keep (run_loop.resume_settings)
            diff = config_diff(saved["run"], metadata["run"])
            if diff:
                raise CheckpointMismatchError(f"{where} was written by a run with other settings, which a resume "
                                              "cannot change (use another workdir to start a new run); differing "
                                              "fields: " + "; ".join(diff))
        stored = self.manager.item_metadata(step)["state"]
        shapes = shape_diff(getattr(stored, "tree", stored), abstract_state) if stored is not None else []
        if shapes:
            raise CheckpointMismatchError(f"{where} has different parameter/optimizer shapes: " + "; ".join(shapes[:8])
                                          + (f"; ... ({len(shapes)} in all)" if len(shapes) > 8 else ""))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, list[Any], dict[str, Any]]:
        """(state tree, per-process data states, metadata) of `step`, arrays laid out as `abstract_state` says."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            metadata=ocp.args.JsonRestore()))
        data = dict(out["data"] or {})
        return out["state"], list(data.get("states", [])), dict(out["metadata"])

    def restore_latest(self, abstract_state: Any, metadata: Mapping[str, Any] | None = None
                       ) -> tuple[int, Any, list[Any], dict[str, Any]] | None:
        """Restore the newest readable step, falling back step by step; None when there is none.

        Unreadable steps (truncated or corrupt files) are logged and moved aside to `<dir>/../unreadable`
        so that later saves of the same step succeed. A model mismatch is raised, never skipped.
        """
        steps = self.all_steps()
        for i in range(len(steps) - 1, -1, -1):
            step = steps[i]
            try:
                if metadata is not None:
                    self.check_compatible(step, metadata, abstract_state)
                state, data, meta = self.restore(step, abstract_state)
                return step, state, data, meta
            except CheckpointMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure means: try the previous step
                previous = f"falling back to step {steps[i - 1]}" if i else "no older checkpoint; starting fresh"
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); %s", step, self.directory,
                            type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "", previous)
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.directory.parent / UNREADABLE_DIR / f"{self.directory.name}_{step}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(self.directory / str(step)), str(target))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"elastic_jax_quarantine_{step}")
        self.manager.reload()


# ---- reading (Orbax's public API; nothing here creates, locks or changes a directory) -------------------------
def _steps_in(path: Path, item: str) -> list[int]:
    """Committed steps of a checkpoint directory (Orbax writes a step under a temporary name, then renames it)."""
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / item).is_dir())


def checkpoint_steps(path: str | Path) -> list[int]:
    """The saved steps of a checkpoint directory (empty when it has none); never creates anything."""
    path = Path(path)
    return _steps_in(path, "state") if path.is_dir() else []


def find_checkpoint(path: str | Path, step: int | None = None, item: str = "state") -> Path:
    """The `item` directory of the newest (or given) step under `path`, or one clear error saying what `path` is.

    `path` may be a checkpoint directory, a step directory or an item directory. A missing directory, a file, a
    Hugging Face model directory and a directory without steps raise FileNotFoundError naming what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory (expected an elastic_jax checkpoint directory)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not an elastic_jax checkpoint directory")
    if path.name == item and (path / "_METADATA").exists():
        return path
    if (path / item).is_dir() and (path / item / "_METADATA").exists():
        return path / item
    if (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} is a Hugging Face model directory, not an elastic_jax checkpoint: pass it with --hf (generate, "
            f"importance) or --parent (elastify), or convert it once with `elastic-jax import-hf --hf {path} "
            "--out <dir>`")
    steps = _steps_in(path, item)
    if not steps and (path / "checkpoints").is_dir() and _steps_in(path / "checkpoints", item):
        raise FileNotFoundError(f"{path} is a run's work directory; its checkpoints are in {path / 'checkpoints'}")
    if not steps:
        raise FileNotFoundError(f"{path}: no checkpoint steps found (expected <dir>/<step>/{item}); not an "
                                "elastic_jax checkpoint directory")
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}; available: {steps}")
    return path / str(chosen) / item


def read_checkpoint_metadata(path: str | Path, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata (model config, tokenizer, experiment, elastic fields) of the newest (or given) step."""
    item_dir = find_checkpoint(path, step, "metadata").absolute()
    handler = ocp.JsonCheckpointHandler()
    try:
        return dict(handler.restore(item_dir) or {})
    finally:
        handler.close()


def _tree_metadata(item_dir: Path) -> Any:
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(item_dir)
    finally:
        handler.close()


def stored_shapes(path: str | Path, *, step: int | None = None, subtree: str = "params"
                  ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{"layers_0/mixer/in_x/kernel": (shape, dtype)} of every stored array under `subtree`, without reading any."""
    item_dir = find_checkpoint(path, step, "state").absolute()
    tree = _tree_metadata(item_dir).tree
    if subtree not in tree:
        raise KeyError(f"{item_dir} has no {subtree!r} subtree")
    return {path_str(p): (tuple(m.shape), np.dtype(m.dtype))
            for p, m in jax.tree_util.tree_leaves_with_path(tree[subtree])}


def _flatten_slices(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten_slices(value, path))
        elif value is not None:
            out[path.replace(".", "/")] = value
    return out


def _index(idx: Any) -> Any:
    if idx is Ellipsis or idx == ():
        return ()
    idx = idx if isinstance(idx, tuple) else (idx,)
    return tuple(np.asarray(i, np.int64) if isinstance(i, (list, np.ndarray)) else i for i in idx)


def restore_slice(path: str | Path, slices: Mapping[str, Any], *, step: int | None = None,
                  subtree: str = "params", item: str = "state") -> dict[str, Any]:
    """Read only a sub-block of each named parameter, as a nested dict of numpy arrays.

    `path` is a checkpoint directory (newest step, or `step`), a step directory, or its `state` item.
    `slices` maps parameters to static indices: either a pytree shaped like the params (leaf = tuple of
    slice / int / int-array per axis; `...` for the whole array; None to skip) or a flat dict
    {"layers_2/mixer/up_proj": (slice(0, 4), slice(None), slice(0, 32))}. Only parameters named in
    `slices` are read, and of those only the chunks that the indices touch. Orbax's restore reads whole
    arrays (or prefixes, for jax arrays), and nested models keep strided blocks (a prefix of every head
    group), so the arrays are opened with the TensorStore spec Orbax's public type handlers give for them.
    """
    item_dir = find_checkpoint(path, step, item).absolute()
    use_zarr3 = bool(getattr(_tree_metadata(item_dir), "use_zarr3", False))
    use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(item_dir)
    context = ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)
    reads = {}
    for name, idx in _flatten_slices(slices).items():
        key = ".".join([subtree, *name.split("/")]) if subtree else ".".join(name.split("/"))
        info = ocp.type_handlers.ParamInfo(name=key, parent_dir=item_dir, is_ocdbt_checkpoint=use_ocdbt,
                                           use_zarr3=use_zarr3, ts_context=context)
        spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt)
        try:
            array = ts.open(spec, context=context, open=True).result()
        except ValueError as err:
            raise KeyError(f"restore_slice: parameter {name!r} is not in {item_dir} ({err})") from None
        index = _index(idx)
        view = array.oindex[index] if any(isinstance(i, np.ndarray) for i in index) else array[index]
        reads[name] = view.read()
    return unflatten({name: np.asarray(future.result()) for name, future in reads.items()})


def load_params(path: str | Path, *, step: int | None = None, subtree: str = "params",
                shardings: Any = None) -> dict[str, Any]:
    """All parameters of a checkpoint (newest step, or `step`) as a nested dict of numpy arrays, or, with
    `shardings`, of jax Arrays laid out by them.

    Orbax's partial restore of the `subtree` only: optimizer state and other items are not read. `shardings`:
    a pytree of Shardings shaped like the stored subtree, or a callable `shardings(abstract)` that makes one
    from the stored ShapeDtypeStructs (e.g. `lambda a: distributed.param_shardings(a, mesh)`). Restoring
    into shardings reads, in every process, only the chunks of the shards its own devices hold: the whole
    model never passes through one host's memory.
    """
    item_dir = find_checkpoint(path, step, "state").absolute()
    tree = _tree_metadata(item_dir).tree
    if subtree not in tree:
        raise KeyError(f"{item_dir} has no {subtree!r} subtree")
    target = {subtree: tree[subtree]}
    if shardings is None:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    else:
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree[subtree])
        layout = shardings(abstract) if callable(shardings) else shardings
        restore_args = {subtree: jax.tree.map(
            lambda a, sh: ocp.ArrayRestoreArgs(sharding=sh, global_shape=a.shape, dtype=a.dtype), abstract, layout)}
    handler = ocp.PyTreeCheckpointHandler()
    try:
        out = handler.restore(item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                                    partial_restore=True))
    finally:
        handler.close()
    return jax.tree.map(np.asarray, dict(out[subtree])) if shardings is None else dict(out[subtree])

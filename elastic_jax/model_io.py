"""Save and load a bare model (config + parameters) as an Orbax checkpoint in the run-checkpoint format, and
the one rule for output directories that every writer follows.

A model written here is a step-0 run checkpoint without optimizer state, so every tool that reads run
checkpoints (slicing, export, generation, `restore_slice`) reads it too.

Output rule: an output directory that exists and is not empty is refused, unless `overwrite` is given (and then
only a directory that holds a model is replaced). Outputs are written under a temporary sibling name and renamed
when complete, so a failed write creates nothing and an overwrite loses nothing until the new model is whole.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.checkpoint import Checkpointer, checkpoint_steps, load_params, read_checkpoint_metadata
from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.distributed import param_shardings


def _holds_output(path: Path) -> bool:
    """A directory --overwrite may replace: an elastic_jax checkpoint, a Hugging Face model directory or an
    `elastic-jax report` (report.json); never a directory of anything else."""
    return bool(checkpoint_steps(path)) or any((path / name).is_file() for name in ("config.json", "report.json"))


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that exists and is not empty (unless `overwrite` and it holds a model or is a file)."""
    path = Path(path)
    if not path.exists():
        return path
    if not path.is_dir():  # a file (e.g. a GGUF export): replaced only when asked
        if not overwrite:
            raise FileExistsError(f"{path} exists; choose another output path, or pass --overwrite to replace it")
        return path
    if not any(path.iterdir()):
        return path
    if not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; choose another output directory, or pass "
                              "--overwrite to replace it")
    if not _holds_output(path):
        raise FileExistsError(f"{path} holds files that are not a model; not replacing it even with --overwrite")
    return path


@contextlib.contextmanager
def writing_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; on success it becomes `path`, on error it is removed."""
    path = check_output(path, overwrite).absolute()
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_output(path, overwrite)  # again: something may have appeared while writing
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in missing:  # innermost first: remove only the (empty) folders made here
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def save_model(path: str | Path, cfg: ModelConfig, params: dict, metadata: dict[str, Any] | None = None,
               step: int = 0, *, overwrite: bool = False) -> Path:
    """Write `params` with `cfg` (and optional extra metadata, e.g. tokenizer or elastic fields) to `path`."""
    state = {"step": np.int32(step), "params": jax.tree.map(np.asanyarray, params)}  # memmaps stay file-backed
    with writing_output(path, overwrite) as tmp:
        ckpt = Checkpointer(tmp)
        try:
            ckpt.save(step, state, None, {"model": cfg.to_dict(), **(metadata or {})})
        finally:
            ckpt.close()
    return Path(path)


def read_metadata(path: str | Path, step: int | None = None) -> dict[str, Any]:
    """The metadata of the newest (or given) step of a checkpoint directory."""
    return read_checkpoint_metadata(path, step)


def model_config_of(path: str | Path, meta: dict[str, Any]) -> ModelConfig:
    """The model config a checkpoint's metadata records (a clear error when it has none)."""
    if "model" not in meta:
        raise ConfigError(f"{path}: checkpoint metadata has no 'model' config; not an elastic_jax checkpoint")
    return ModelConfig.from_dict(meta["model"])


def load_model(path: str | Path, step: int | None = None, mesh: jax.sharding.Mesh | None = None
               ) -> tuple[ModelConfig, dict, dict[str, Any]]:
    """(config, parameters, metadata) of a model or run checkpoint (newest step unless `step` is given).

    With `mesh`, the parameters are restored straight into their shardings on it (distributed.param_shardings,
    from the declarations; a run checkpoint's {"model", "router"}: the router replicated), each process reading
    only its own shards; without, as numpy arrays on the host.
    """
    meta = read_metadata(path, step)
    cfg = model_config_of(path, meta)
    params = load_params(path, step=step, shardings=None if mesh is None else functools.partial(_layout, mesh))
    return cfg, params, meta


def _layout(mesh: jax.sharding.Mesh, abstract: dict) -> dict:
    if "router" in abstract and "model" in abstract:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return {**{k: jax.tree.map(lambda _: replicated, v) for k, v in abstract.items() if k != "model"},
                "model": param_shardings(abstract["model"], mesh)}
    return param_shardings(abstract, mesh)

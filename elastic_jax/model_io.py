"""Save and load a bare model (config + parameters) as an Orbax checkpoint in the run-checkpoint format.

A model written here is a step-0 run checkpoint without optimizer state, so every tool that reads run
checkpoints (slicing, export, generation, `restore_slice`) reads it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.checkpoint import Checkpointer, load_params
from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.experiment import model_config_from


def save_model(path: str | Path, cfg: ModelConfig, params: dict, metadata: dict[str, Any] | None = None,
               step: int = 0) -> Path:
    """Write `params` with `cfg` (and optional extra metadata, e.g. tokenizer or elastic fields) to `path`."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; choose a new output directory")
    ckpt = Checkpointer(path)
    state = {"step": np.int32(step), "params": jax.tree.map(np.asarray, params)}
    ckpt.save(step, state, None, {"model": cfg.to_dict(), **(metadata or {})})
    ckpt.close()
    return path


def read_metadata(path: str | Path, step: int | None = None) -> dict[str, Any]:
    """The metadata of the newest (or given) step of a checkpoint directory."""
    ckpt = Checkpointer(path)
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"{path}: no checkpoint steps found")
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}; available: {steps}")
    meta = ckpt.read_metadata(chosen)
    ckpt.close()
    return meta


def load_model(path: str | Path, step: int | None = None) -> tuple[ModelConfig, dict, dict[str, Any]]:
    """(config, parameters, metadata) of a model or run checkpoint (newest step unless `step` is given)."""
    meta = read_metadata(path, step)
    if "model" not in meta:
        raise ConfigError(f"{path}: checkpoint metadata has no 'model' config; not an elastic_jax checkpoint")
    cfg = model_config_from(meta["model"])
    params = load_params(path, step=step)
    return cfg, params, meta

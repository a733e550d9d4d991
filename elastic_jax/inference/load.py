"""An Engine over any elastic checkpoint: a float one (elastic_jax's own format) or a quantised one (`elastic-jax
quantize`: the parent in Model-Optimizer's Hugging Face layout under `parent/`, the router and the elastic metadata
under `router/`); optionally holding a float parent quantised (`--quant`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from elastic_jax.checkpoint import load_params
from elastic_jax.config import ModelConfig
from elastic_jax.convert.modelopt import import_modelopt
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference.engine import Engine
from elastic_jax.model_io import read_metadata
from elastic_jax.quant.params import quantize_params

QUANT_MARK = "quantized"  # the router metadata's section naming a quantised checkpoint's format


def is_quantized_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "parent" / "config.json").is_file() and (Path(path) / "router").is_dir()


def engine_parts(path: str | Path) -> tuple[Engine, dict[str, Any] | None, str | None]:
    """(Engine over the parent's weights, float or quantised, input scales or None, format or None)."""
    if not is_quantized_checkpoint(path):
        return Engine.load(path), None, None
    meta = read_metadata(Path(path) / "router")
    cfg = ModelConfig.from_dict(meta["model"])
    qcfg, qparams, scales = import_modelopt(Path(path) / "parent")
    if qcfg != cfg:
        raise ElasticError(f"{path}: parent/config.json does not match the router's model config")
    engine = Engine(cfg, {"model": qparams, "router": load_params(Path(path) / "router")}, meta)
    return engine, scales, meta[QUANT_MARK]["format"]


def load_engine(path: str | Path, quant: str | None = None) -> Engine:
    """An Engine serving every budget of `path` (elastic or quantised elastic checkpoint); with `quant` its parent
    is held quantised (quantised here unless stored so) and each program dequantises it inside the jit."""
    engine, _, fmt = engine_parts(path)
    if quant is None or quant == fmt:
        return engine
    if fmt is not None:
        raise ElasticError(f"--quant {quant}: {path} is quantised in {fmt}; pass --quant {fmt} (or none)")
    qparams = quantize_params(jax.device_get(engine.params), engine.cfg, quant)
    return Engine(engine.cfg, {"model": qparams, "router": engine.router_params}, engine.meta)

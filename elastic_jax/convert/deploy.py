"""Deployable budgets: quantise an elastic checkpoint once and export any budget of it, float or quantised, with
widths aligned for the runtime that loads it and the tokenizer files it needs.

A quantised elastic checkpoint (`quantize_checkpoint`) is a directory holding
- `parent/`: the whole (permuted) parent in Model-Optimizer's Hugging Face layout (convert/modelopt.py), its
  static input scales calibrated on a few calibration batches of the float parent;
- `router/`: an elastic_jax checkpoint of the router's parameters, with the elastic metadata (budgets, router,
  tokenizer) of the source checkpoint and `quantized: {"format": ...}`.
Any budget is then cut from the quantised parent (`slice_quantized`: whole 16-blocks, the parent's per-tensor
scales and input scales kept), never re-quantised.

Alignment: the router's choice for a budget is snapped (`deployment_spec`) to the width multiples the export
needs (elastic_jax/elastic/router/candidates.py `DEPLOY_MULTIPLE`: 8 values for bf16/f16, 4 for float32, 16 for
FP8/NVFP4), so transformers' grouped expert matmul and NVFP4 blocks both take the exported model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from elastic_jax.elastic.router.candidates import DEPLOY_MULTIPLE, deployment_spec
from elastic_jax.elastic.spec import ElasticError

QUANT_MARK = "quantized"


def is_quantized_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "parent" / "config.json").is_file() and (Path(path) / "router").is_dir()


def _engine(path: str | Path):
    """(Engine over the parent's weights, float or quantised, input scales or None, format or None)."""
    from elastic_jax.inference.engine import Engine

    if not is_quantized_checkpoint(path):
        return Engine.load(path), None, None
    from elastic_jax.checkpoint import load_params
    from elastic_jax.convert.modelopt import import_modelopt
    from elastic_jax.experiment import model_config_from
    from elastic_jax.model_io import read_metadata

    meta = read_metadata(Path(path) / "router")
    cfg = model_config_from(meta["model"])
    qcfg, qparams, scales = import_modelopt(Path(path) / "parent")
    if qcfg != cfg:
        raise ElasticError(f"{path}: parent/config.json does not match the router's model config")
    engine = Engine(cfg, {"model": qparams, "router": load_params(Path(path) / "router")}, meta)
    return engine, scales, meta[QUANT_MARK]["format"]


def load_engine(path: str | Path, quant: str | None = None):
    """An Engine serving every budget of `path` (elastic or quantised elastic checkpoint); with `quant` its parent
    is held quantised (quantised here unless stored so) and each program dequantises it inside the jit."""
    from elastic_jax.inference.engine import Engine
    from elastic_jax.quant.params import quantize_params

    engine, _, fmt = _engine(path)
    if quant is None or quant == fmt:
        return engine
    if fmt is not None:
        raise ElasticError(f"--quant {quant}: {path} is quantised in {fmt}; pass --quant {fmt} (or none)")
    qparams = quantize_params(jax.device_get(engine.params), engine.cfg, quant)
    return Engine(engine.cfg, {"model": qparams, "router": engine.router_params}, engine.meta)


def _calibrate(engine, batches: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    from elastic_jax.data.calibration import calibration_batches, calibration_source
    from elastic_jax.quant.calibrate import input_amax

    cfg = engine.cfg
    data, tokenizer = calibration_source(engine.meta, cfg.vocab_size)
    tokens = calibration_batches(data, tokenizer, batches, seq_len, batch_size, max_seq_len=cfg.max_position_embeddings)
    return input_amax(cfg, engine.params, tokens)


def quantize_checkpoint(path: str | Path, fmt: str, out: str | Path, *, batches: int = 4, seq_len: int = 128,
                        batch_size: int = 8, overwrite: bool = False) -> Path:
    """Quantise an elastic checkpoint's parent once (NVIDIA's default exclusions) into a quantised checkpoint."""
    from elastic_jax.convert.modelopt import export_modelopt
    from elastic_jax.model_io import save_model, writing_output
    from elastic_jax.quant.params import quantize_params

    engine, _, done = _engine(path)
    if done is not None:
        raise ElasticError(f"quantize: {path} is already a quantised checkpoint ({done})")
    amax = _calibrate(engine, batches, seq_len, batch_size)
    qparams = quantize_params(jax.device_get(engine.params), engine.cfg, fmt)
    meta = {k: v for k, v in engine.meta.items() if k != "model"}
    meta[QUANT_MARK] = {"format": fmt, "calibration": {"batches": batches, "seq_len": seq_len,
                                                       "batch_size": batch_size}}
    with writing_output(out, overwrite) as tmp:
        export_modelopt(engine.cfg, qparams, tmp / "parent", amax=amax, tokenizer=engine.tokenizer)
        save_model(tmp / "router", engine.cfg, jax.device_get(engine.router_params), meta)
    return Path(out)


def export_budget(path: str | Path, budget: float, out: str | Path, *, quant: str | None = None,
                  dtype: str = "bfloat16", layout: str = "nvidia", overwrite: bool = False, batches: int = 4):
    """Export one budget of an elastic (or quantised elastic) checkpoint as a Hugging Face directory: float in
    `dtype`, or in Model-Optimizer's `quant` layout. Returns (the exported spec, its config)."""
    from elastic_jax.convert.hf import to_hf
    from elastic_jax.convert.modelopt import export_modelopt
    from elastic_jax.elastic.slicing import slice_params
    from elastic_jax.quant.params import quantize_params
    from elastic_jax.quant.slicing import slice_plan, slice_quantized

    engine, scales, fmt = _engine(path)
    if fmt is not None and quant not in (None, fmt):
        raise ElasticError(f"--quant {quant}: {path} is quantised in {fmt}; pass --quant {fmt} (or none)")
    quant = quant or fmt
    spec = deployment_spec(engine.cfg, engine.arch(budget).spec, DEPLOY_MULTIPLE[quant or dtype])
    if quant is None:
        params, cfg = slice_params(jax.device_get(engine.params), engine.cfg, spec)
        to_hf(cfg, params, out, dtype=dtype, layout=layout, overwrite=overwrite, tokenizer=engine.tokenizer)
        return spec, cfg
    if layout != "nvidia":
        raise ElasticError("export-hf --quant: Model-Optimizer checkpoints use NVIDIA's layout (--layout nvidia)")
    if fmt is None:  # quantise the parent (its own per-tensor and input scales), then slice: as a stored one
        amax = _calibrate(engine, batches, 128, 8)
        from elastic_jax.convert.modelopt import input_scale

        scales = {n: input_scale(a, quant) for n, a in amax.items()}
        qparent = quantize_params(jax.device_get(engine.params), engine.cfg, quant)
    else:
        qparent = jax.device_get(engine.params)
    qparams, cfg = slice_quantized(qparent, engine.cfg, spec)
    kept = {new: scales[old] for new, old, _, _ in slice_plan(engine.cfg, spec) if old in scales}
    export_modelopt(cfg, qparams, out, input_scales=kept, tokenizer=engine.tokenizer, overwrite=overwrite)
    return spec, cfg


__all__ = ["export_budget", "is_quantized_checkpoint", "load_engine", "quantize_checkpoint"]

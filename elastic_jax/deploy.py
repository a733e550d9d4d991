"""Deployable budgets: cut any budget out of an elastic checkpoint (`slice`), quantise the checkpoint once
(`quantize`) and export any budget of it, float or quantised (`export-hf`, `export-gguf`), with widths aligned for
the runtime that loads it and the tokenizer files it needs.

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

import sys
from pathlib import Path
from typing import Any

import jax

from elastic_jax.checkpoint import load_params, restore_slice, stored_shapes
from elastic_jax.config import ModelConfig
from elastic_jax.convert.gguf import GGUF_DTYPES, GGUFExportError, check_exportable, to_gguf
from elastic_jax.convert.hf import to_hf
from elastic_jax.convert.modelopt import export_modelopt, input_scale
from elastic_jax.data import load_tokenizer
from elastic_jax.data.calibration import calibration_batches, calibration_source
from elastic_jax.elastic.accounting import count_params, format_count
from elastic_jax.elastic.router.candidates import DEPLOY_MULTIPLE, deployment_spec
from elastic_jax.elastic.slice_checkpoint import budget_spec, read_sub_model
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import Budget, ElasticError, ElasticSpec
from elastic_jax.inference.commands import load_budget, require_budget
from elastic_jax.inference.load import QUANT_MARK, engine_parts
from elastic_jax.model_io import check_output, load_model, model_config_of, read_metadata, save_model, writing_output
from elastic_jax.quant.calibrate import input_amax
from elastic_jax.quant.params import quantize_params
from elastic_jax.quant.slicing import slice_plan, slice_quantized


def _progress(message: str) -> None:
    """A progress line on stderr (stdout keeps the result) for the steps that take seconds on a large parent."""
    print(message, file=sys.stderr, flush=True)


def slice_checkpoint(path: str | Path, budget: float, out: str | Path, fmt: str = "elastic_jax", *,
                     overwrite: bool = False) -> tuple[ElasticSpec, ModelConfig]:
    """Write the nested model of `budget` to `out` (format "elastic_jax" or "hf").

    From an elastic checkpoint only the sub-model's bytes (and the small router, for a budget between trained
    ones) are read; a ranked parent without a router is read whole, since the zero-shot search runs it.
    """
    check_output(out, overwrite)
    meta = read_metadata(path)
    cfg = model_config_of(path, meta)
    stored = stored_shapes(path)
    elastic = "router" in (meta.get("elastic") or {}) and any(n.startswith("router/") for n in stored)
    if elastic:
        trained = any(abs(float(key) - budget) < 1e-9 for key in meta["elastic"].get("specs") or {})
        router = {} if trained else restore_slice(path, {n: ... for n in stored if n.startswith("router/")})
        spec = budget_spec(cfg, router, meta, budget)
        _progress(f"reading the sub-model of budget {budget:g} from {path} ...")
        sub_params, sub_cfg = read_sub_model(path, cfg, spec, "model/"), spec.apply_to(cfg)
    else:
        if not 0.0 < budget <= 1.0 or (meta.get("elastic") or {}).get("ranking") is None:
            budget_spec(cfg, {}, meta, budget)  # a bad budget or an unranked parent: one error before any read
        _progress(f"reading the parent {path} ...")
        params = load_params(path)
        params = params.get("model", params) if "router" in params else params
        _progress(f"searching an architecture for budget {budget:g} (zero-shot) and slicing ...")
        spec = budget_spec(cfg, params, meta, budget)
        sub_params, sub_cfg = slice_params(params, cfg, spec)
    _progress(f"writing {out} ({fmt}) ...")
    if fmt == "hf":
        to_hf(sub_cfg, sub_params, out, overwrite=overwrite)
    else:
        extra = {k: v for k, v in meta.items() if k in ("tokenizer",)}
        save_model(out, sub_cfg, sub_params, {**extra, "sliced_from": {"budget": budget, "spec": spec.to_dict()}},
                   overwrite=overwrite)
    return spec, sub_cfg


def slice_summary(path: str | Path, budget: float, spec: ElasticSpec, sub_cfg: ModelConfig) -> str:
    """What `slice` prints: the target beside the fraction achieved (in the checkpoint's budget metric), total and
    active parameters, and the architecture."""
    meta = read_metadata(path)
    cfg = model_config_of(path, meta)
    elastic = meta.get("elastic") or {}  # the router's metric (older checkpoints: the flat train section's)
    metric = (elastic.get("router") or {}).get("metric") or (elastic.get("train") or {}).get("metric") or "total_params"
    achieved = Budget(1.0, metric).measure(sub_cfg) / Budget(1.0, metric).measure(cfg)
    total, active = count_params(sub_cfg)
    parent_total, parent_active = count_params(cfg)
    return (f"budget {budget:g}: target {budget:.1%} of the parent's {metric}, achieved {achieved:.1%}\n"
            f"total {format_count(total)} ({total / parent_total:.1%}) active {format_count(active)} "
            f"({active / parent_active:.1%})\nspec {spec.to_dict()}")


def _calibrate(engine, batches: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    cfg = engine.cfg
    data, tokenizer = calibration_source(engine.meta, cfg.vocab_size)
    tokens = calibration_batches(data, tokenizer, batches, seq_len, batch_size, max_seq_len=cfg.max_position_embeddings)
    return input_amax(cfg, engine.params, tokens)


def quantize_checkpoint(path: str | Path, fmt: str, out: str | Path, *, batches: int = 4, seq_len: int = 128,
                        batch_size: int = 8, overwrite: bool = False) -> Path:
    """Quantise an elastic checkpoint's parent once (NVIDIA's default exclusions) into a quantised checkpoint."""
    engine, _, done = engine_parts(path)
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
    engine, scales, fmt = engine_parts(path)
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
        scales = {n: input_scale(a, quant) for n, a in amax.items()}
        qparent = quantize_params(jax.device_get(engine.params), engine.cfg, quant)
    else:
        qparent = jax.device_get(engine.params)
    qparams, cfg = slice_quantized(qparent, engine.cfg, spec)
    kept = {new: scales[old] for new, old, _, _ in slice_plan(engine.cfg, spec) if old in scales}
    export_modelopt(cfg, qparams, out, input_scales=kept, tokenizer=engine.tokenizer, overwrite=overwrite)
    return spec, cfg


def export_gguf(checkpoint: str, out: str, dtype: str = "f32", budget: float | None = None, *,
                overwrite: bool = False) -> Path:
    """`elastic-jax export-gguf`: a budget of an elastic checkpoint (or a plain model) as one GGUF file."""
    if dtype not in GGUF_DTYPES:
        raise GGUFExportError(f"export-gguf: --dtype {dtype!r}; allowed: {', '.join(GGUF_DTYPES)}")
    require_budget(checkpoint, budget, "export-gguf")
    meta = read_metadata(checkpoint)
    if budget is None:
        check_exportable(model_config_of(checkpoint, meta), dtype)  # before reading any weights
        cfg, params, _ = load_model(checkpoint)
        tokenizer = load_tokenizer(meta.get("tokenizer"))
    else:
        cfg, params, tokenizer = load_budget(checkpoint, budget)
    return to_gguf(cfg, params["model"] if "router" in params else params, tokenizer, out, dtype,
                   name=Path(checkpoint).name, overwrite=overwrite)

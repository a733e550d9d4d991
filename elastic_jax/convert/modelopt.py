"""Quantised Hugging Face checkpoints in NVIDIA Model-Optimizer's unified layout (what vLLM, SGLang and
TensorRT-LLM load as `quantization="modelopt"`), written from and read back into `NVFP4Array` / `FP8Array` trees.

Layout (Model-Optimizer's `export_hf_checkpoint`, as in NVIDIA's published *-FP8 / *-NVFP4 checkpoints): tensor
names are the bf16 checkpoint's (`backbone.layers.{i}.mixer.experts.{j}.up_proj.weight`, ...); each quantised
Linear `<m>` stores
- `<m>.weight`: NVFP4 codes packed two per byte along the input axis (uint8 [out, in/2], first value in the low
  nibble) or FP8 codes (float8_e4m3fn [out, in]);
- `<m>.weight_scale`: NVFP4 per-16-block scales (float8_e4m3fn [out, in/16]) or the FP8 per-tensor scale (float32,
  shape (); [out, 1] per channel);
- `<m>.weight_scale_2`: NVFP4's global scale (float32 ());
- `<m>.input_scale`: the static activation scale (float32 ()): amax / 448 (FP8) or amax / (6 * 448) (NVFP4).
Everything else (embeddings, norms, the SSM parameters, the excluded modules) stays bfloat16 (the MoE correction
bias float32). config.json carries `quantization_config` {quant_method: "modelopt", quant_algo: "FP8" | "NVFP4",
group_size: 16, kv_cache_quant_algo: null, exclude_modules: [...]}, and hf_quant_config.json the same under
`quantization` with the producer, as Model-Optimizer writes both.

Fused tensors (Mamba's in_proj parts) share one per-tensor scale (`quantize_params` gives them the scale of their
concatenation); the experts of one layer share the stacked weight's scales, written once per expert. Importing a
checkpoint whose per-expert or fused-part scales differ raises, naming the tensor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.convert.hf import _shards, _write_hf
from elastic_jax.convert.hf_config import ConversionError, config_from_hf, config_to_hf
from elastic_jax.convert.hf_weights import _per_expert, hf_groups
from elastic_jax.convert.tokenizer_export import write_tokenizer
from elastic_jax.model.declare import ParamDecl, unflatten
from elastic_jax.model.hybrid import model_declarations
from elastic_jax.model_io import check_output, writing_output
from elastic_jax.quant import fp8, nvfp4
from elastic_jax.quant.exact import div
from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array
from elastic_jax.quant.params import QUANTISED, flat_leaves

QUANT_ALGO = {"nvfp4": "NVFP4", "fp8": "FP8"}
PRODUCER = {"name": "modelopt", "version": "0.47.0"}
T = lambda a: np.ascontiguousarray(np.asarray(a).T)  # noqa: E731
_BF16 = ml_dtypes.bfloat16


def input_scale(amax: Any, fmt: str) -> np.float32:
    """The static input scale of an activation amax: amax / 448 (FP8) or amax / (6 * 448) (NVFP4), float32."""
    if fmt == "fp8":
        return np.float32(fp8.scale_from_amax(np.float32(amax)))
    return np.float32(div(np.float32(amax), nvfp4.E2M1_MAX * nvfp4.E4M3_MAX))


def _float_tensors(name: str, decls: list[ParamDecl], arrays: list[np.ndarray]):
    kind = decls[0].hf.layout
    if kind == "linear":
        yield name, T(np.concatenate(arrays, axis=-1) if len(arrays) > 1 else arrays[0]).astype(_BF16)
    elif kind == "vector":
        target = np.float32 if name.endswith("e_score_correction_bias") else _BF16
        yield name, np.asarray(arrays[0]).astype(target)
    elif kind == "conv1d":
        yield name, np.ascontiguousarray(T(arrays[0])[:, None, :]).astype(_BF16)
    else:
        for j in range(arrays[0].shape[0]):
            yield _per_expert(name, j), T(arrays[0][j]).astype(_BF16)


def _one_scale(values: list[Any], what: str) -> np.float32:
    first = np.float32(np.asarray(values[0]))
    if any(np.float32(np.asarray(v)).tobytes() != first.tobytes() for v in values):
        raise ConversionError(f"{what}: the parts stored in one tensor have different per-tensor scales; quantise "
                              "with quantize_params (fused parts share one scale)")
    return first


def _quant_tensors(base: str, qs: list[Any], in_scale: np.float32 | None):
    """(name, array) of one quantised Linear `base` (without '.weight') from its parts [in, out]-oriented."""
    if isinstance(qs[0], NVFP4Array):
        yield f"{base}.weight", T(np.concatenate([np.asarray(q.packed) for q in qs], axis=-1))
        yield f"{base}.weight_scale", T(np.concatenate([np.asarray(q.scale) for q in qs], axis=-1))
        yield f"{base}.weight_scale_2", _one_scale([q.scale_2 for q in qs], base)
    else:
        yield f"{base}.weight", T(np.concatenate([np.asarray(q.data) for q in qs], axis=-1))
        if np.ndim(qs[0].weight_scale):
            yield f"{base}.weight_scale", T(np.concatenate([np.asarray(q.weight_scale) for q in qs], axis=-1))
        else:
            yield f"{base}.weight_scale", _one_scale([q.weight_scale for q in qs], base)
    if in_scale is not None:
        yield f"{base}.input_scale", np.float32(in_scale)


def _expert(q: Any, j: int) -> Any:
    """Expert j of a stacked [E, in, out] quantised weight, as an [in, out] one (axis 0)."""
    if isinstance(q, NVFP4Array):
        return NVFP4Array(np.asarray(q.packed)[j], np.asarray(q.scale)[j], q.scale_2, 0)
    scale = np.asarray(q.weight_scale)
    return FP8Array(np.asarray(q.data)[j], scale[j] if scale.ndim else scale, q.input_scale, 0)


def modelopt_tensors(cfg: ModelConfig, qparams: Any, fmt: str, amax: Mapping[str, Any] | None = None,
                     input_scales: Mapping[str, Any] | None = None):
    """(tensors [(name, array)], excluded module names) of a quantised tree in Model-Optimizer's layout."""
    leaves = flat_leaves(qparams)
    missing = sorted({d.name for d in model_declarations(cfg)} - set(leaves))
    if missing:
        raise ConversionError(f"export_modelopt: declared parameter(s) {missing[:5]} are missing from the tree")
    tensors, excluded = [], []
    for name, decls in hf_groups(cfg, "backbone").items():
        arrays = [leaves[d.name] for d in decls]
        quantised = [isinstance(a, QUANTISED) for a in arrays]
        if not any(quantised):
            if decls[0].quant_in is not None:
                n = decls[0].shape[0] if decls[0].hf.layout == "experts" else 0
                excluded += [_per_expert(name, j)[:-len(".weight")] for j in range(n)] or [name[:-len(".weight")]]
            tensors += list(_float_tensors(name, decls, [np.asarray(a, np.float32) for a in arrays]))
            continue
        if not all(quantised):
            raise ConversionError(f"{name}: some of its parts are quantised and some not; exclude all or none")
        scale = _input_scale(arrays[0], decls[0].name, amax, fmt, input_scales)
        if decls[0].hf.layout == "experts":
            for j in range(decls[0].shape[0]):
                tensors += list(_quant_tensors(_per_expert(name, j)[:-len(".weight")], [_expert(arrays[0], j)], scale))
        else:
            tensors += list(_quant_tensors(name[:-len(".weight")], arrays, scale))
    return tensors, excluded


def _input_scale(q: Any, path: str, amax: Mapping[str, Any] | None, fmt: str,
                 scales: Mapping[str, Any] | None = None) -> np.float32 | None:
    if scales is not None and path in scales:
        return np.float32(scales[path])
    if amax is not None and path in amax:
        return input_scale(amax[path], fmt)
    if isinstance(q, FP8Array) and q.input_scale is not None:
        return np.float32(q.input_scale)
    return None


def quantization_config(fmt: str, excluded: list[str]) -> dict[str, Any]:
    return {"quant_method": "modelopt", "quant_algo": QUANT_ALGO[fmt], "kv_cache_quant_algo": None,
            "group_size": 16, "exclude_modules": excluded, "producer": PRODUCER}


def export_modelopt(cfg: ModelConfig, qparams: Any, path: str | os.PathLike, *, amax: Mapping[str, Any] | None = None,
                    input_scales: Mapping[str, Any] | None = None, tokenizer: Any = None,
                    max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> Path:
    """Write a quantised tree (`quantize_params` / `slice_quantized`) as a Model-Optimizer Hugging Face directory.

    `amax`: {weight path: input amax} (`quant.calibrate.input_amax`) for the static `input_scale`s (FP8 weights
    may carry their own), or `input_scales` {weight path: input_scale} as given (a slice keeps its parent's); a
    quantised weight without one is refused. `tokenizer`: written as tokenizer files."""
    check_output(path, overwrite)
    leaves = jax.tree_util.tree_leaves(qparams, is_leaf=lambda x: isinstance(x, QUANTISED))
    kinds = {type(x) for x in leaves if isinstance(x, QUANTISED)}
    if len(kinds) != 1:
        raise ConversionError("export_modelopt: the tree must hold weights of exactly one quantised format "
                              f"(NVFP4 or FP8), found {sorted(k.__name__ for k in kinds) or 'none'}")
    fmt = "nvfp4" if kinds == {NVFP4Array} else "fp8"
    tensors, excluded = modelopt_tensors(cfg, jax.device_get(qparams), fmt, amax, input_scales)
    names = {n for n, _ in tensors}
    missing = sorted(n[:-len(".weight_scale")] for n in names
                     if n.endswith(".weight_scale") and n.replace(".weight_scale", ".input_scale") not in names)
    if missing:
        raise ConversionError(f"export_modelopt: no input_scale for {missing[:3]} ({len(missing)} weights); pass "
                              "amax= from quant.calibrate.input_amax on a few calibration batches")
    hf = config_to_hf(cfg, "bfloat16")
    qc = quantization_config(fmt, excluded)
    hf["quantization_config"] = qc
    tensors = [(n, np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a)) for n, a in tensors]  # scalars stay ()
    with writing_output(path, overwrite) as tmp:
        _write_hf(tmp, cfg, hf, _shards(tensors, max_shard_bytes), None)
        quant = {k: v for k, v in qc.items() if k not in ("quant_method", "producer")}
        (tmp / "hf_quant_config.json").write_text(json.dumps({"producer": PRODUCER, "quantization": quant}, indent=2))
        if tokenizer is not None:
            write_tokenizer(tokenizer, tmp)
    return Path(path)


def _read_quant(get, base: str, fmt: str, in_axis: int) -> tuple[Any, np.float32 | None]:
    """One quantised Linear `base` as an [in, out] NVFP4Array / FP8Array (axis 0) and its input scale."""
    scale_in = np.float32(get(f"{base}.input_scale")) if get.has(f"{base}.input_scale") else None
    w, s = get(f"{base}.weight"), get(f"{base}.weight_scale")
    if fmt == "nvfp4":
        return NVFP4Array(T(w), T(s), np.float32(get(f"{base}.weight_scale_2")), 0), scale_in
    return FP8Array(T(w), T(s) if np.ndim(s) else np.float32(s), scale_in, 0), scale_in


def _split(q: Any, sizes: list[int]) -> list[Any]:
    """Cut an [in, out] quantised weight into parts along its output axis."""
    bounds = np.cumsum(sizes)[:-1]
    if isinstance(q, NVFP4Array):
        return [NVFP4Array(p, s, q.scale_2, 0) for p, s in zip(np.split(q.packed, bounds, -1),
                                                                np.split(q.scale, bounds, -1))]
    scales = np.split(q.weight_scale, bounds, -1) if np.ndim(q.weight_scale) else [q.weight_scale] * len(sizes)
    return [FP8Array(d, s, q.input_scale, 0) for d, s in zip(np.split(q.data, bounds, -1), scales)]


def _stack(qs: list[Any], name: str) -> Any:
    """Per-expert [in, out] weights -> one stacked [E, in, out] (axis 1); per-tensor scales must agree."""
    if isinstance(qs[0], NVFP4Array):
        return NVFP4Array(np.stack([q.packed for q in qs]), np.stack([q.scale for q in qs]),
                          _one_scale([q.scale_2 for q in qs], name), 1)
    ws = [np.asarray(q.weight_scale) for q in qs]
    scale = np.stack(ws) if ws[0].ndim else _one_scale(ws, name)
    ins = [q.input_scale for q in qs]
    return FP8Array(np.stack([q.data for q in qs]), scale, None if ins[0] is None else _one_scale(ins, name), 1)


_ST_DTYPES = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "BF16": _BF16, "F16": np.float16, "F32": np.float32,
              "U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64}


class SafetensorsReader:
    """Tensors of a directory's *.safetensors files read with numpy alone (safetensors' numpy loader has no
    float8): the format is an 8-byte header length, a JSON header of dtype / shape / byte offsets, the data."""

    def __init__(self, path: Path):
        self.path, self.index = path, {}
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"{path}: no *.safetensors files")
        for f in files:
            with open(f, "rb") as handle:
                n = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(n))
            for name, entry in header.items():
                if name != "__metadata__":
                    self.index[name] = (f, 8 + n, entry)

    def has(self, name: str) -> bool:
        return name in self.index

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.index:
            raise ConversionError(f"{self.path}: missing tensor {name!r} (the checkpoint does not match its config)")
        f, start, entry = self.index[name]
        if entry["dtype"] not in _ST_DTYPES:
            raise ConversionError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}; "
                                  f"allowed: {list(_ST_DTYPES)}")
        lo, hi = entry["data_offsets"]
        raw = np.fromfile(f, dtype=np.uint8, count=hi - lo, offset=start + lo)
        return raw.view(_ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def import_modelopt(path: str | os.PathLike) -> tuple[ModelConfig, dict, dict[str, np.float32]]:
    """(config, quantised tree, {weight path: input_scale}) of a Model-Optimizer directory in NVIDIA's layout."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConversionError(f"{path}: no config.json; expected a Hugging Face NemotronH model directory")
    hf = json.loads((path / "config.json").read_text())
    qc = hf.get("quantization_config") or {}
    algo = {v: k for k, v in QUANT_ALGO.items()}.get(str(qc.get("quant_algo")).upper())
    if qc.get("quant_method") != "modelopt" or algo is None:
        raise ConversionError(f"{path}: config.json quantization_config must have quant_method 'modelopt' and "
                              f"quant_algo 'FP8' or 'NVFP4', got {qc or 'none'}")
    cfg, get = config_from_hf(hf), SafetensorsReader(path)
    flat: dict[str, Any] = {}
    scales: dict[str, np.float32] = {}
    for name, decls in hf_groups(cfg, "backbone").items():
        first, base = decls[0], name[:-len(".weight")]
        experts = first.hf.layout == "experts"
        probe = _per_expert(name, 0)[:-len(".weight")] if experts else base
        if first.quant_in is None or not get.has(f"{probe}.weight_scale"):
            flat.update(_read_float(get, name, decls))
            continue
        if experts:
            parts = [_read_quant(get, _per_expert(name, j)[:-len(".weight")], algo, 0) for j in range(first.shape[0])]
            flat[first.name] = _stack([q for q, _ in parts], name)
            ins = [s for _, s in parts]
            if ins[0] is not None:
                scales[first.name] = _one_scale(ins, name)
            continue
        q, scale_in = _read_quant(get, base, algo, 0)
        for decl, part in zip(decls, _split(q, [d.shape[-1] for d in decls])):
            flat[decl.name] = part
            if scale_in is not None:
                scales[decl.name] = scale_in
    return cfg, unflatten(flat), scales


def _read_float(get, name: str, decls: list[ParamDecl]) -> dict[str, np.ndarray]:
    first, kind = decls[0], decls[0].hf.layout
    if kind == "linear":
        full = np.asarray(get(name), np.float32).T
        bounds = np.cumsum([d.shape[-1] for d in decls])[:-1]
        return {d.name: p for d, p in zip(decls, np.split(full, bounds, axis=-1))}
    if kind == "vector":
        return {first.name: np.asarray(get(name), np.float32)}
    if kind == "conv1d":
        return {first.name: np.asarray(get(name), np.float32)[:, 0, :].T}
    return {first.name: np.stack([np.asarray(get(_per_expert(name, j)), np.float32).T for j in range(first.shape[0])])}


__all__ = ["export_modelopt", "import_modelopt", "input_scale", "modelopt_tensors", "quantization_config"]

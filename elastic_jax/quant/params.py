"""Quantising a model's parameter tree: every declared weight with a quantisation input axis becomes an
`NVFP4Array` or `FP8Array` (elastic_jax/quant/nvfp4.py, fp8.py) along that axis, the rest stays as it is.

Which weights are quantised comes from the declarations (elastic_jax/model/declare.py): a `ParamDecl` with
`quant_in` set names the axis its matmul contracts over (0 for an [in, out] kernel, 1 for stacked experts
[E, in, out]); embeddings, norms, convolutions and the SSM parameters have none and stay in floating point.

The default exclusions follow NVIDIA's own NVFP4 checkpoint of Nemotron Nano v3 (METHOD §7) and
Model-Optimizer's defaults: the read-out (`lm_head`), the MoE routers (`gate`), every attention projection, and
the Mamba projections of each Mamba layer directly before an attention layer stay unquantised (the block kinds'
records say which, elastic_jax/model/blocks.py). `excluded`
replaces that list with glob patterns over parameter paths ('layers_3/mixer/*', '*/out_proj/kernel').

Per-tensor scales are the parent's to keep: `quantize_params(..., scales=...)` quantises with given per-tensor
scales (a slice with its parent's), and `slice_quantized` (elastic_jax/quant/slicing.py) cuts a quantised
parent without recomputing them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.model.blocks import BLOCKS
from elastic_jax.model.declare import ParamDecl, check_declared, unflatten
from elastic_jax.model.hybrid import model_declarations
from elastic_jax.quant import fp8, nvfp4
from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array

FORMATS = ("nvfp4", "fp8")
QUANTISED = (NVFP4Array, FP8Array)


def default_excluded(cfg: ModelConfig) -> tuple[str, ...]:
    """NVIDIA's choice of weights kept unquantised (see the module docstring), as path patterns: the read-out,
    and per layer what its block kind keeps (`quant_excluded`, `quant_excluded_before`; elastic_jax/model/blocks.py)."""
    out = ["lm_head/*"]
    for i, letter in enumerate(cfg.pattern):
        kind, following = BLOCKS[letter], cfg.pattern[i + 1:i + 2]
        patterns = ("*",) if following and following in kind.quant_excluded_before else kind.quant_excluded
        out += [f"layers_{i}/mixer/{p}" for p in patterns]
    return tuple(out)


def _is_quantised(x: Any) -> bool:
    return isinstance(x, QUANTISED)


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def flat_leaves(tree: Any) -> dict[str, Any]:
    """{'layers_0/mixer/in_x/kernel': leaf} with quantised weights as single leaves."""
    pairs = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_quantised)[0]
    return {"/".join(_key(k) for k in path): leaf for path, leaf in pairs}


def quantised_names(cfg: ModelConfig, excluded: Iterable[str] | None = None) -> tuple[str, ...]:
    """The paths of the weights `quantize_params` quantises (declared with an input axis, not excluded)."""
    patterns = default_excluded(cfg) if excluded is None else tuple(excluded)
    candidates = [d.name for d in model_declarations(cfg) if d.quant_in is not None]
    if excluded is not None:
        unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in candidates)]
        if unused:
            raise ValueError(f"excluded: pattern(s) {unused} match no quantisable weight; weights are named by their "
                             f"path, e.g. {candidates[:3]}")
    return tuple(n for n in candidates if not any(fnmatch.fnmatchcase(n, p) for p in patterns))


def _quantise_one(x: Any, decl: ParamDecl, fmt: str, per_channel: bool, scale: Any) -> Any:
    if fmt == "nvfp4":
        return nvfp4.encode(x, decl.quant_in, scale)
    return fp8.encode(x, decl.quant_in, per_channel, scale)


def shared_scale_groups(cfg: ModelConfig, names: Iterable[str], fmt: str, per_channel: bool = False
                        ) -> list[list[ParamDecl]]:
    """The quantised weights (among `names`) stored in one Hugging Face tensor (Mamba's in_proj parts), group by
    group: each group shares one per-tensor scale (none with per-channel FP8 scales)."""
    names = set(names)
    groups: dict[str, list[ParamDecl]] = {}
    for decl in model_declarations(cfg):  # declarations stored in one tensor declare its name
        if decl.name in names:
            groups.setdefault(decl.hf.name, []).append(decl)
    return [g for g in groups.values() if len(g) >= 2 and not (fmt == "fp8" and per_channel)]


def _fused_scales(leaves: Mapping[str, Any], cfg: ModelConfig, names: set[str], fmt: str,
                  per_channel: bool) -> dict[str, Any]:
    """One per-tensor scale for the weights stored in one Hugging Face tensor (Mamba's in_proj parts): the scale of
    their concatenation (along the output axis), so the fused tensor exports with a single `weight_scale(_2)`."""
    out: dict[str, Any] = {}
    for fused in shared_scale_groups(cfg, names, fmt, per_channel):
        whole = np.concatenate([np.asarray(leaves[d.name], np.float32) for d in fused], axis=-1)
        scale = nvfp4.global_scale(whole) if fmt == "nvfp4" else fp8.weight_scale(whole, fused[0].quant_in)
        out.update({d.name: scale for d in fused})
    return out


def quantize_params(params: Any, cfg: ModelConfig, fmt: str, excluded: Iterable[str] | None = None, *,
                    per_channel: bool = False, scales: Mapping[str, Any] | None = None) -> dict:
    """`params` with each quantised weight (see `quantised_names`) encoded in `fmt` ("nvfp4" or "fp8") along its
    declared input axis, on the host. `per_channel`: FP8 weight scales per output channel. `scales`: per-tensor
    scales by path (NVFP4 `scale_2`, FP8 `weight_scale`) to use instead of each weight's own; weights fused into one
    Hugging Face tensor (Mamba's in_proj parts) share the per-tensor scale of their concatenation by default."""
    if fmt not in FORMATS:
        raise ValueError(f"quantisation format {fmt!r}; allowed: {list(FORMATS)}")
    if per_channel and fmt != "fp8":
        raise ValueError("per_channel: per-channel weight scales are an FP8 option; NVFP4 has per-block scales")
    decls = {d.name: d for d in model_declarations(cfg)}
    leaves = check_declared(params, decls.values(), "quantize_params")
    names = set(quantised_names(cfg, excluded))
    if fmt == "nvfp4":
        bad = [f"{n} (input axis {decls[n].quant_in}, size {decls[n].shape[decls[n].quant_in]})"
               for n in sorted(names) if decls[n].shape[decls[n].quant_in] % nvfp4.BLOCK]
        if bad:
            raise ValueError(f"nvfp4: these weights' input axes are not multiples of {nvfp4.BLOCK}: {bad[:4]}; "
                             "exclude them (excluded=...) or quantise in fp8")
    scales = {} if scales is None else dict(scales)
    unknown = sorted(set(scales) - names)
    if unknown:
        raise ValueError(f"scales: {unknown[:4]} are not quantised weights of this model")
    scales = {**_fused_scales(leaves, cfg, names, fmt, per_channel), **scales}
    out = {n: _quantise_one(np.asarray(x), decls[n], fmt, per_channel, scales.get(n)) if n in names else x
           for n, x in leaves.items()}
    return unflatten(out)


def per_tensor_scales(qparams: Any) -> dict[str, Any]:
    """{path: per-tensor scale} of a quantised tree (NVFP4 `scale_2`, FP8 `weight_scale`)."""
    return {n: (q.scale_2 if isinstance(q, NVFP4Array) else q.weight_scale)
            for n, q in flat_leaves(qparams).items() if _is_quantised(q)}


def dequantize_params(qparams: Any, dtype: Any = jnp.bfloat16) -> dict:
    """The tree with every quantised weight decoded to `dtype` (JAX; usable inside jit); other leaves as they are."""
    def one(x):
        if isinstance(x, NVFP4Array):
            return nvfp4.decode_jax(x, dtype)
        if isinstance(x, FP8Array):
            return fp8.decode_jax(x, dtype)
        return x
    return jax.tree_util.tree_map(one, qparams, is_leaf=_is_quantised)


def checkpoint_bytes(qparams: Any, float_bytes: int = 2) -> int:
    """Bytes of a (quantised) tree: quantised weights at their encoded size, other leaves at `float_bytes` per
    value (2: stored in bf16)."""
    return sum(int(x.nbytes) if _is_quantised(x) else int(np.size(x)) * float_bytes
               for x in flat_leaves(qparams).values())


def planned_bytes(cfg: ModelConfig, fmt: str, excluded: Iterable[str] | None = None, float_bytes: int = 2) -> int:
    """`checkpoint_bytes` of `quantize_params(params, cfg, fmt, excluded)` from the declarations alone (per-tensor
    scales), without any weights: e.g. for a full-size model's config."""
    if fmt not in FORMATS:
        raise ValueError(f"quantisation format {fmt!r}; allowed: {list(FORMATS)}")
    names = set(quantised_names(cfg, excluded))
    total = 0
    for d in model_declarations(cfg):
        n = int(np.prod(d.shape))
        if d.name not in names:
            total += n * float_bytes
        else:
            total += n // 2 + n // nvfp4.BLOCK + 4 if fmt == "nvfp4" else n + 4
    return total


__all__ = ["FORMATS", "checkpoint_bytes", "default_excluded", "dequantize_params", "flat_leaves", "per_tensor_scales",
           "planned_bytes", "quantised_names", "quantize_params", "shared_scale_groups"]

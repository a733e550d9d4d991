"""Slicing a quantised parent: quantise once, cut any budget afterwards, bit for bit what quantising the slice with
the parent's per-tensor scales gives.

Each weight is cut exactly as `slice_params` cuts its float form (the same declarations, kept sizes and layer
order): NVFP4 codes are unpacked to one per value and sliced, and the block scales follow the blocks the kept
values came from, which must be whole: every kept run of the input axis has to cover complete 16-value blocks
of the parent (cut widths whose input channels are multiples of 16 and whose structure keeps them aligned).
FP8 codes are elementwise and per-channel scales follow their output channels. Per-tensor scales stay the
parent's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.slicing import kept_sizes, slice_array
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model.declare import ParamDecl, unflatten
from elastic_jax.model.hybrid import block_declarations, model_declarations
from elastic_jax.quant import nvfp4
from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array
from elastic_jax.quant.params import flat_leaves


def slice_plan(cfg: ModelConfig, spec: ElasticSpec) -> Iterator[tuple[str, str, ParamDecl, dict[str, int]]]:
    """(path in the slice, path in the parent, declaration, kept sizes) of every parameter, as `slice_params`."""
    keep = kept_sizes(cfg, spec, None, ())
    for decl in model_declarations(cfg):
        if not decl.path[0].startswith("layers_"):
            yield decl.name, decl.name, decl, keep
    for new, layer in enumerate(spec.kept_layers(cfg)):
        decls = block_declarations(cfg, layer)
        keep = kept_sizes(cfg, spec, layer, decls)
        for decl in decls:
            yield f"layers_{new}/{decl.name}", f"layers_{layer}/{decl.name}", decl, keep


def _slice_nvfp4(q: NVFP4Array, decl: ParamDecl, keep: dict[str, int], name: str) -> NVFP4Array:
    codes = slice_array(nvfp4.unpack_codes(q), decl, keep)
    ids = np.arange(q.scale.size, dtype=np.int64).reshape(q.scale.shape)
    ids = slice_array(np.repeat(ids, nvfp4.BLOCK, axis=q.axis), decl, keep)  # each value's parent block
    runs = np.moveaxis(ids, q.axis, -1)
    if runs.shape[-1] % nvfp4.BLOCK == 0:
        runs = runs.reshape(runs.shape[:-1] + (-1, nvfp4.BLOCK))
    if runs.shape[-1] != nvfp4.BLOCK or not np.all(runs == runs[..., :1]):
        raise ValueError(f"slice of NVFP4 weight {name}: the kept input channels (axis {q.axis}, "
                         f"{ids.shape[q.axis]} of {q.shape[q.axis]}) split 16-value blocks; an NVFP4 slice keeps "
                         "whole blocks (input widths that are multiples of 16, cut on block boundaries)")
    blocks = np.moveaxis(runs[..., 0], -1, q.axis)
    scale = np.asarray(q.scale).reshape(-1)[blocks]
    return NVFP4Array(nvfp4.pack_codes(codes, q.axis), scale, q.scale_2, q.axis)


def _slice_fp8(q: FP8Array, decl: ParamDecl, keep: dict[str, int]) -> FP8Array:
    data = slice_array(np.asarray(q.data), decl, keep)
    scale = np.asarray(q.weight_scale)
    if scale.ndim:  # per output channel: follows the channels, one value along the input axis
        full = slice_array(np.broadcast_to(scale, q.shape), decl, keep)
        scale = np.take(full, [0], axis=q.axis)
    return FP8Array(data, scale, q.input_scale, q.axis)


def slice_quantized(qparams: Any, cfg: ModelConfig, spec: ElasticSpec) -> tuple[dict, ModelConfig]:
    """(quantised nested parameters, nested config): the static prefix slice of a permuted, quantised parent."""
    spec.validate(cfg)
    leaves = flat_leaves(qparams)
    missing = sorted({d.name for d in model_declarations(cfg)} - set(leaves))
    if missing:
        raise ValueError(f"slice_quantized: declared parameter(s) {missing[:5]} are missing from the tree")
    out = {}
    for new, old, decl, keep in slice_plan(cfg, spec):
        x = leaves[old]
        if isinstance(x, NVFP4Array):
            out[new] = _slice_nvfp4(x, decl, keep, old)
        elif isinstance(x, FP8Array):
            out[new] = _slice_fp8(x, decl, keep)
        else:
            out[new] = slice_array(x, decl, keep)
    return unflatten(out), spec.apply_to(cfg)


__all__ = ["slice_plan", "slice_quantized"]

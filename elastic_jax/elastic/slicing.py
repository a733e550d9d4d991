"""Static prefix slicing of a (permuted) parent's parameters, and the equivalent masks of the masked forward.

Both come from the parameter declarations (elastic_jax/model/declare.py): a spec gives every logical axis a kept
size (`kept_sizes`), `slice_params` cuts each declared dimension to those sizes with basic slices and reshapes
only (Mamba heads and experts are an equal prefix of every B/C / routing group, attention keeps whole KV groups
or a per-group prefix of query heads), so it is pure and jit-friendly with the spec static; `spec_masks` builds
the 0/1 `Masks` (elastic_jax/model/masks.py) under which the parent's masked forward computes exactly the
sliced model. Soft masks (e.g. from a router) use the same structure.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model.declare import (
    ELASTIC_AXES,
    Dim,
    ParamDecl,
    check_declared,
    elastic_axes_of,
    elastic_axis_size,
    unflatten,
)
from elastic_jax.model.hybrid import block_declarations, model_declarations
from elastic_jax.model.masks import LayerMasks, Masks

Array = Any  # numpy or jax array


def group_prefix(x: Array, axis: int, groups: int, keep: int, unit: int = 1) -> Array:
    """Keep the first `keep` of each of `groups` equal blocks of `unit`-wide items along `axis`."""
    axis = axis % x.ndim
    size = x.shape[axis]
    per = size // (groups * unit)
    if keep == per:
        return x
    shape = x.shape[:axis] + (groups, per, unit) + x.shape[axis + 1:]
    cut = x.reshape(shape)[(slice(None),) * (axis + 1) + (slice(0, keep),)]
    return cut.reshape(x.shape[:axis] + (groups * keep * unit,) + x.shape[axis + 1:])


def _concat(parts: list[Array], axis: int) -> Array:
    """numpy concatenation for numpy inputs (slices stay on the host), jnp otherwise."""
    if all(isinstance(x, np.ndarray) for x in parts):
        return np.concatenate(parts, axis=axis)
    return jnp.concatenate(parts, axis=axis)


def kept_sizes(cfg: ModelConfig, spec: ElasticSpec, layer: int | None, decls: tuple[ParamDecl, ...]
               ) -> dict[str, int]:
    """The kept size of every logical axis the spec cuts at parent layer `layer` (None: outside the layers);
    axes not listed keep their full size."""
    keep = {"embed": spec.hidden(cfg)}
    if layer is None:
        return keep
    for name in elastic_axes_of(decls):
        ea, sizes = ELASTIC_AXES[name], elastic_axis_size(decls, name)
        width = spec.width(cfg, ea.field, layer)
        if len(ea.axes) == 1:
            keep[ea.axes[0]] = width
        elif ea.groups == "fixed":  # an equal prefix of every group
            keep[ea.axes[1]] = width // sizes[0]
        else:  # whole groups move: the spec's attention mode says how many groups (KV heads) stay
            major = spec.kv_heads(cfg, layer)
            keep[ea.axes[0]], keep[ea.axes[1]] = major, width // major
    return keep


def _slice_segment(x: Array, axis: int, shape: tuple[int, ...], kept: tuple[int, ...]) -> Array:
    """Keep the leading `kept` of each logical axis of a segment of shape `shape` stored flat along `axis`."""
    if kept == shape:
        return x
    cut = [i for i, (n, k) in enumerate(zip(shape, kept)) if n != k]
    if cut == [0]:  # only the major axis is cut: one basic slice
        return x[(slice(None),) * axis + (slice(0, kept[0] * math.prod(shape[1:])),)]
    lead, tail = x.shape[:axis], x.shape[axis + 1:]
    index = (slice(None),) * axis + tuple(slice(0, k) for k in kept)
    return x.reshape(lead + shape + tail)[index].reshape(lead + (math.prod(kept),) + tail)


def _slice_dim(x: Array, axis: int, d: Dim, decl: ParamDecl, keep: dict[str, int]) -> Array:
    parts, start = [], 0
    for seg in d.segments:
        shape = decl.segment_shape(seg)
        kept = tuple(min(keep.get(a, n), n) for a, n in zip(seg, shape))
        size = math.prod(shape)
        part = x if len(d.segments) == 1 else x[(slice(None),) * axis + (slice(start, start + size),)]
        parts.append(_slice_segment(part, axis, shape, kept))
        start += size
    return parts[0] if len(parts) == 1 else _concat(parts, axis)


def slice_array(x: Array, decl: ParamDecl, keep: dict[str, int]) -> Array:
    """One declared parameter cut to the kept sizes of its logical axes."""
    for i, d in enumerate(decl.dims):
        x = _slice_dim(x, i, d, decl, keep)
    return x


def slice_params(params: dict, cfg: ModelConfig, spec: ElasticSpec) -> tuple[dict, ModelConfig]:
    """(nested parameters, nested config): static prefix slices of a permuted parent (importance order first)."""
    sub_cfg = spec.apply_to(cfg)
    leaves = check_declared(params, model_declarations(cfg), "slice_params")
    out: dict[str, Any] = {}
    outer = [d for d in model_declarations(cfg) if not d.path[0].startswith("layers_")]
    keep = kept_sizes(cfg, spec, None, ())
    for decl in outer:
        out[decl.name] = slice_array(leaves[decl.name], decl, keep)
    for new, layer in enumerate(spec.kept_layers(cfg)):
        decls = block_declarations(cfg, layer)
        keep = kept_sizes(cfg, spec, layer, decls)
        for decl in decls:
            out[f"layers_{new}/{decl.name}"] = slice_array(leaves[f"layers_{layer}/{decl.name}"], decl, keep)
    return unflatten(out), sub_cfg


def _prefix_mask(sizes: tuple[int, ...], kept: tuple[int, ...]) -> np.ndarray:
    """The flattened outer product of per-axis prefix masks (1 on the kept leading items of each axis)."""
    mask = np.ones((), np.float32)
    for n, k in zip(sizes, kept):
        mask = np.multiply.outer(mask, (np.arange(n) < k).astype(np.float32))
    return mask.reshape(-1)


def layer_masks(cfg: ModelConfig, spec: ElasticSpec, layer: int, decls: tuple[ParamDecl, ...] | None = None
                ) -> dict[str, np.ndarray]:
    """{elastic axis: 0/1 mask} of parent layer `layer` under `spec` (depth excluded)."""
    decls = block_declarations(cfg, layer) if decls is None else decls
    keep = kept_sizes(cfg, spec, layer, decls)
    out = {}
    for name in elastic_axes_of(decls):
        sizes = elastic_axis_size(decls, name)
        out[name] = _prefix_mask(sizes, tuple(keep.get(a, n) for a, n in zip(ELASTIC_AXES[name].axes, sizes)))
    return out


def spec_masks(cfg: ModelConfig, spec: ElasticSpec) -> Masks:
    """Hard 0/1 masks (numpy float32) under which the parent's masked forward equals the sliced model."""
    spec.validate(cfg)
    kept = set(spec.kept_layers(cfg))
    layers = tuple(LayerMasks(depth=np.float32(layer in kept), **layer_masks(cfg, spec, layer))
                   for layer in range(cfg.num_layers))
    return Masks(hidden=_prefix_mask((cfg.hidden_size,), (spec.hidden(cfg),)), layers=layers)


def full_masks(cfg: ModelConfig) -> Masks:
    """All-ones masks of the parent (the mask structure a router fills in)."""
    return spec_masks(cfg, ElasticSpec())

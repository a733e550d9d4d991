"""Function-preserving reordering of a parent so that importance order becomes storage order.

A ranking is {"hidden": int[D], "layers": [per layer: {axis: int[n]}], "depth": int[L] (optional)}: each array is
a permutation listing old indices in their new order (most important first). Per-layer axes: "mamba_heads" [H]
(must keep every head in its B/C group), "attention_heads" [Hq] (query heads, kv-group major: whole KV groups
move together, heads move within groups), "ffn" [F], "experts" [E] (within routing groups), "expert_ffn" [F_e]
(one order for all experts), "shared_ffn" [F_s]. Missing entries mean "keep the order". "depth" is not
applied (layer order is the function); it says which layers a shallower model keeps.

Which arrays move, and along which dimension, comes from the parameter declarations
(elastic_jax/model/declare.py): every declared dimension holding an elastic axis's logical axes is reordered,
including one that holds only its major axis (K/V projections follow their KV group; B/C stay put because
Mamba heads never leave their group).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.model.declare import (
    ELASTIC_AXES,
    Dim,
    ElasticAxis,
    ParamDecl,
    check_declared,
    elastic_axes_of,
    elastic_axis_size,
    unflatten,
)
from elastic_jax.model.hybrid import block_declarations, model_declarations

Array = Any


def _check_perm(order: Any, size: int, what: str, groups: int = 1) -> np.ndarray:
    """A validated int permutation of range(size) that maps every block of size/groups into itself."""
    order = np.asarray(order)
    if order.shape != (size,) or sorted(order.tolist()) != list(range(size)):
        raise ElasticError(f"ranking.{what}: expected a permutation of 0..{size - 1}, got shape {order.shape}")
    per = size // groups
    if groups > 1 and np.any(order // per != np.arange(size) // per):
        raise ElasticError(f"ranking.{what}: must reorder only within each of its {groups} groups of {per}")
    return order.astype(np.int64)


def _check_whole_groups(order: Any, size: int, groups: int, what: str) -> np.ndarray:
    """Permutation that moves groups whole and items only within their group (attention's KV groups)."""
    order = _check_perm(order, size, what)
    per = size // groups
    blocks = order.reshape(groups, per) // per
    if np.any(blocks != blocks[:, :1]):
        raise ElasticError(f"ranking.{what}: query heads may only move within their KV group (and groups whole)")
    return order


def check_order(order: Any, ea: ElasticAxis, sizes: tuple[int, ...], what: str) -> np.ndarray:
    """A ranking entry validated against its elastic axis's structure."""
    size = math.prod(sizes)
    if len(sizes) == 1:
        return _check_perm(order, size, what)
    if ea.groups == "whole":
        return _check_whole_groups(order, size, sizes[0], what)
    return _check_perm(order, size, what, sizes[0])


def _segment_index(decl: ParamDecl, seg: tuple[str, ...], ea: ElasticAxis, order: np.ndarray) -> np.ndarray | None:
    """The new order of a segment's flat items under `order`, or None when the segment has none of ea's axes."""
    pos = [i for i, a in enumerate(seg) if a in ea.axes]
    if not pos:
        return None
    shape = decl.segment_shape(seg)
    index = np.arange(math.prod(shape)).reshape(shape)
    covered = tuple(seg[i] for i in pos)
    if covered == ea.axes and pos == list(range(pos[0], pos[0] + len(pos))):
        merged = shape[:pos[0]] + (-1,) + shape[pos[-1] + 1:]
        index = np.take(index.reshape(merged), order, axis=pos[0])
    elif covered == ea.axes[:1]:  # only the major axis here: it follows the groups' moves
        per = len(order) // decl.size(ea.axes[0])
        index = np.take(index, order.reshape(-1, per)[:, 0] // per, axis=pos[0])
    else:
        raise ElasticError(f"{decl.name}: its dimension {seg} holds part of elastic axis {ea.name} {ea.axes} that "
                           "a permutation cannot reorder")
    return index.reshape(-1)


def _dim_index(decl: ParamDecl, d: Dim, ea: ElasticAxis, order: np.ndarray) -> np.ndarray | None:
    parts, start, moved = [], 0, False
    for seg in d.segments:
        size = math.prod(decl.segment_shape(seg))
        index = _segment_index(decl, seg, ea, order)
        moved |= index is not None
        parts.append(start + (np.arange(size) if index is None else index))
        start += size
    index = np.concatenate(parts)
    return index if moved and np.any(index != np.arange(start)) else None


def permute_array(x: Array, decl: ParamDecl, ea: ElasticAxis, order: np.ndarray) -> Array:
    """One declared parameter with every dimension that holds `ea` reordered by `order` (numpy or jax)."""
    for i, d in enumerate(decl.dims):
        index = _dim_index(decl, d, ea, order)
        if index is not None:
            x = x[(slice(None),) * i + (index,)]
    return x


def ranking_to_json(ranking: dict) -> dict:
    """The ranking with plain int lists (for JSON checkpoint metadata); permute_params accepts it back as is."""
    as_list = lambda v: [int(i) for i in np.asarray(v).reshape(-1)]  # noqa: E731
    out = {k: as_list(v) for k, v in ranking.items() if k != "layers"}
    if "layers" in ranking:
        out["layers"] = [{k: as_list(v) for k, v in (entry or {}).items()} for entry in ranking["layers"]]
    return out


def _layer_orders(cfg: ModelConfig, layer: int, rank: dict, decls: tuple[ParamDecl, ...]) -> dict[str, np.ndarray]:
    """The validated orders of one layer's ranking entry."""
    where, known = f"layers[{layer}]", elastic_axes_of(decls)
    unknown = sorted(set(rank) - set(known))
    if unknown:
        raise ElasticError(f"ranking.{where}: axes {unknown} do not apply to a {cfg.pattern[layer]!r} layer; "
                           f"allowed: {sorted(known)}")
    return {name: check_order(rank[name], ELASTIC_AXES[name], elastic_axis_size(decls, name), f"{where}.{name}")
            for name in known if name in rank}


def permute_params(params: dict, cfg: ModelConfig, ranking: dict) -> dict:
    """The same function with every ranked axis stored in importance order (then nested models are prefixes)."""
    layers = ranking.get("layers", [{}] * cfg.num_layers)
    if len(layers) != cfg.num_layers:
        raise ElasticError(f"ranking.layers: expected {cfg.num_layers} entries (one per layer), got {len(layers)}")
    unknown = sorted(set(ranking) - {"hidden", "layers", "depth"})
    if unknown:
        raise ElasticError(f"ranking: unknown key(s) {unknown}; allowed: ['depth', 'hidden', 'layers']")
    hidden = None
    if "hidden" in ranking:
        hidden = check_order(ranking["hidden"], ELASTIC_AXES["hidden"], (cfg.hidden_size,), "hidden")
    leaves = dict(check_declared(params, model_declarations(cfg), "permute_params"))
    for layer in range(cfg.num_layers):
        decls = block_declarations(cfg, layer)
        for name, order in _layer_orders(cfg, layer, layers[layer] or {}, decls).items():
            for decl in decls:
                path = f"layers_{layer}/{decl.name}"
                leaves[path] = permute_array(leaves[path], decl, ELASTIC_AXES[name], order)
    if hidden is not None:
        for decl in model_declarations(cfg):
            leaves[decl.name] = permute_array(leaves[decl.name], decl, ELASTIC_AXES["hidden"], hidden)
    return unflatten(leaves)

"""Function-preserving reordering of a parent so that importance order becomes storage order.

A ranking is {"hidden": int[D], "layers": [per layer: {axis: int[n]}], "depth": int[L] (optional)}: each array is
a permutation listing old indices in their new order (most important first). Per-layer axes: "mamba_heads" [H]
(must keep every head in its B/C group), "attention_heads" [Hq] (query heads, kv-group major: whole KV groups
move together, heads move within groups), "ffn" [F], "experts" [E] (within routing groups), "expert_ffn" [F_e]
(one order for all experts), "shared_ffn" [F_s]. Missing entries mean "keep the order". "depth" is not
applied (layer order is the function); it says which layers a shallower model keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticError

Array = Any


def _take(x: Array, order: np.ndarray, axis: int, unit: int = 1) -> Array:
    """Reorder `unit`-wide blocks of `axis` by `order` (works for numpy and jax arrays)."""
    index = (order[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    return x[(slice(None),) * (axis % x.ndim) + (index,)]


def _check_perm(order: Any, size: int, what: str, groups: int = 1) -> np.ndarray:
    """A validated int permutation of range(size) that maps every block of size/groups into itself."""
    order = np.asarray(order)
    if order.shape != (size,) or sorted(order.tolist()) != list(range(size)):
        raise ElasticError(f"ranking.{what}: expected a permutation of 0..{size - 1}, got shape {order.shape}")
    per = size // groups
    if groups > 1 and np.any(order // per != np.arange(size) // per):
        raise ElasticError(f"ranking.{what}: must reorder only within each of its {groups} groups of {per}")
    return order.astype(np.int64)


def _check_attention(order: Any, q: int, kv: int, what: str) -> np.ndarray:
    """Query-head permutation that moves KV groups whole and heads only within their group."""
    order = _check_perm(order, q, what)
    per = q // kv
    blocks = order.reshape(kv, per) // per
    if np.any(blocks != blocks[:, :1]):
        raise ElasticError(f"ranking.{what}: query heads may only move within their KV group (and groups whole)")
    return order


def _mamba(p: dict, cfg: ModelConfig, layer: int, order: np.ndarray) -> dict:
    hd, d_inner = cfg.mamba_head_dim, cfg.mamba_d_inner(layer)
    conv_order = np.concatenate([(order[:, None] * hd + np.arange(hd)).reshape(-1),
                                 np.arange(d_inner, p["conv_bias"].shape[0])])
    out = dict(p)
    out["in_z"] = {"kernel": _take(p["in_z"]["kernel"], order, 1, hd)}
    out["in_x"] = {"kernel": _take(p["in_x"]["kernel"], order, 1, hd)}
    out["in_dt"] = {"kernel": _take(p["in_dt"]["kernel"], order, 1)}
    out["conv_kernel"] = _take(p["conv_kernel"], conv_order, 1)
    out["conv_bias"] = _take(p["conv_bias"], conv_order, 0)
    for name in ("dt_bias", "A_log", "D"):
        out[name] = _take(p[name], order, 0)
    out["norm"] = {"weight": _take(p["norm"]["weight"], order, 0, hd)}
    out["out_proj"] = {"kernel": _take(p["out_proj"]["kernel"], order, 0, hd)}
    return out


def _attention(p: dict, cfg: ModelConfig, layer: int, order: np.ndarray) -> dict:
    hd, per = cfg.head_dim, cfg.width("num_attention_heads", layer) // cfg.width("num_key_value_heads", layer)
    kv_order = order.reshape(-1, per)[:, 0] // per
    return {"q_proj": {"kernel": _take(p["q_proj"]["kernel"], order, 1, hd)},
            "k_proj": {"kernel": _take(p["k_proj"]["kernel"], kv_order, 1, hd)},
            "v_proj": {"kernel": _take(p["v_proj"]["kernel"], kv_order, 1, hd)},
            "o_proj": {"kernel": _take(p["o_proj"]["kernel"], order, 0, hd)}}


def _mlp(p: dict, order: np.ndarray) -> dict:
    return {"up_proj": {"kernel": _take(p["up_proj"]["kernel"], order, 1)},
            "down_proj": {"kernel": _take(p["down_proj"]["kernel"], order, 0)}}


def _moe(p: dict, experts: np.ndarray | None, ffn: np.ndarray | None, shared: np.ndarray | None) -> dict:
    out = dict(p)
    if experts is not None:
        out["gate"] = _take(p["gate"], experts, 1)
        out["e_score_correction_bias"] = _take(p["e_score_correction_bias"], experts, 0)
        out["up_proj"] = _take(p["up_proj"], experts, 0)
        out["down_proj"] = _take(p["down_proj"], experts, 0)
    if ffn is not None:
        out["up_proj"] = _take(out["up_proj"], ffn, 2)
        out["down_proj"] = _take(out["down_proj"], ffn, 1)
    if shared is not None:
        out["shared_experts"] = _mlp(p["shared_experts"], shared)
    return out


def _permute_layer(p: dict, cfg: ModelConfig, layer: int, rank: dict) -> dict:
    kind, where = cfg.pattern[layer], f"layers[{layer}]"
    known = {"M": {"mamba_heads"}, "*": {"attention_heads"}, "-": {"ffn"},
             "E": {"experts", "expert_ffn", "shared_ffn"}}[kind]
    unknown = sorted(set(rank) - known)
    if unknown:
        raise ElasticError(f"ranking.{where}: axes {unknown} do not apply to a {kind!r} layer; "
                           f"allowed: {sorted(known)}")
    if kind == "M" and "mamba_heads" in rank:
        order = _check_perm(rank["mamba_heads"], cfg.mamba_heads(layer), f"{where}.mamba_heads", cfg.mamba_n_groups)
        return _mamba(p, cfg, layer, order)
    if kind == "*" and "attention_heads" in rank:
        order = _check_attention(rank["attention_heads"], cfg.width("num_attention_heads", layer),
                                 cfg.width("num_key_value_heads", layer), f"{where}.attention_heads")
        return _attention(p, cfg, layer, order)
    if kind == "-" and "ffn" in rank:
        return _mlp(p, _check_perm(rank["ffn"], cfg.width("intermediate_size", layer), f"{where}.ffn"))
    if kind == "E":
        get = lambda axis, field, groups=1: None if axis not in rank else _check_perm(  # noqa: E731
            rank[axis], cfg.width(field, layer), f"{where}.{axis}", groups)
        return _moe(p, get("experts", "n_routed_experts", cfg.n_group), get("expert_ffn", "moe_intermediate_size"),
                    get("shared_ffn", "moe_shared_expert_intermediate_size"))
    return p


def _permute_hidden(params: dict, cfg: ModelConfig, order: np.ndarray) -> dict:
    """Every array that reads or writes the residual stream, reordered along its hidden axis."""
    hidden_axes = {"in_z": 0, "in_x": 0, "in_B": 0, "in_C": 0, "in_dt": 0, "out_proj": 1, "q_proj": 0, "k_proj": 0,
                   "v_proj": 0, "o_proj": 1, "gate": 0, "up_proj": 0, "down_proj": 1}
    out = {"embeddings": {"embedding": _take(params["embeddings"]["embedding"], order, 1)},
           "norm_f": {"weight": _take(params["norm_f"]["weight"], order, 0)},
           "lm_head": {"kernel": _take(params["lm_head"]["kernel"], order, 0)}}
    for layer, kind in enumerate(cfg.pattern):
        p = params[f"layers_{layer}"]
        mixer = {}
        for name, value in p["mixer"].items():
            if name == "shared_experts":
                value = {k: {"kernel": _take(v["kernel"], order, hidden_axes[k])} for k, v in value.items()}
            elif kind == "E" and name in ("up_proj", "down_proj"):
                value = _take(value, order, 1 if name == "up_proj" else 2)
            elif name == "gate":
                value = _take(value, order, 0)
            elif name in hidden_axes:
                value = {"kernel": _take(value["kernel"], order, hidden_axes[name])}
            mixer[name] = value
        out[f"layers_{layer}"] = {"norm": {"weight": _take(p["norm"]["weight"], order, 0)}, "mixer": mixer}
    return out


def ranking_to_json(ranking: dict) -> dict:
    """The ranking with plain int lists (for JSON checkpoint metadata); permute_params accepts it back as is."""
    as_list = lambda v: [int(i) for i in np.asarray(v).reshape(-1)]  # noqa: E731
    out = {k: as_list(v) for k, v in ranking.items() if k != "layers"}
    if "layers" in ranking:
        out["layers"] = [{k: as_list(v) for k, v in (entry or {}).items()} for entry in ranking["layers"]]
    return out


def permute_params(params: dict, cfg: ModelConfig, ranking: dict) -> dict:
    """The same function with every ranked axis stored in importance order (then nested models are prefixes)."""
    layers = ranking.get("layers", [{}] * cfg.num_layers)
    if len(layers) != cfg.num_layers:
        raise ElasticError(f"ranking.layers: expected {cfg.num_layers} entries (one per layer), got {len(layers)}")
    unknown = sorted(set(ranking) - {"hidden", "layers", "depth"})
    if unknown:
        raise ElasticError(f"ranking: unknown key(s) {unknown}; allowed: ['depth', 'hidden', 'layers']")
    out = dict(params)
    for layer in range(cfg.num_layers):
        p = params[f"layers_{layer}"]
        mixer = _permute_layer(p["mixer"], cfg, layer, layers[layer] or {})
        out[f"layers_{layer}"] = {"norm": p["norm"], "mixer": mixer}
    if "hidden" in ranking:
        out = _permute_hidden(out, cfg, _check_perm(ranking["hidden"], cfg.hidden_size, "hidden"))
    return out

"""Static prefix slicing of a (permuted) parent's parameters, and the equivalent masks of the masked forward.

`slice_params` cuts a nested model out with basic slices and reshapes only (Mamba heads and experts are kept
as an equal prefix of every B/C group / routing group; attention keeps whole KV groups or a per-group prefix
of query heads), so it is pure and jit-friendly with the spec static. `spec_masks` builds the 0/1 masks that
make the parent's masked forward compute exactly the sliced model; soft masks (e.g. from a router) use the
same structure:

    {"hidden": f32[D], "layers": [per parent layer: {"depth": f32[], <kind's masks>}]}
    M: "mamba_heads" [H]   *: "attention_heads" [Hq, kv-group major]   -: "ffn" [F]
    E: "experts" [E], "expert_ffn" [F_e], "shared_ffn" [F_s]

What a mask value m does (hard 0/1 masks reproduce the slice exactly; fractional values interpolate):
hidden: the embedding and every mixer output are multiplied by m, and every RMSNorm takes the m-weighted mean
of x^2 (sum(x^2 m) / sum(m)); heads / neurons / channels: their output is multiplied by m (Mamba's gated group
norm also averages over the kept channels of each group); experts: an expert with m <= 0 is not a routing
candidate (top-k unchanged) and a chosen expert's routing weight is multiplied by m; depth: the layer's mixer
output is multiplied by the gate (0 makes the block an identity).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticSpec

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


def _mamba(p: dict, cfg: ModelConfig, spec: ElasticSpec, layer: int, d: int) -> dict:
    g, hd = cfg.mamba_n_groups, cfg.mamba_head_dim
    keep = spec.width(cfg, "mamba_num_heads", layer) // g
    d_inner = cfg.mamba_d_inner(layer)
    heads = lambda x, axis, unit=1: group_prefix(x, axis, g, keep, unit)  # noqa: E731
    cat = _concat
    return {
        "in_z": {"kernel": heads(p["in_z"]["kernel"][:d], 1, hd)},
        "in_x": {"kernel": heads(p["in_x"]["kernel"][:d], 1, hd)},
        "in_B": {"kernel": p["in_B"]["kernel"][:d]},
        "in_C": {"kernel": p["in_C"]["kernel"][:d]},
        "in_dt": {"kernel": heads(p["in_dt"]["kernel"][:d], 1)},
        "conv_kernel": cat([heads(p["conv_kernel"][:, :d_inner], 1, hd), p["conv_kernel"][:, d_inner:]], axis=1),
        "conv_bias": cat([heads(p["conv_bias"][:d_inner], 0, hd), p["conv_bias"][d_inner:]], axis=0),
        "dt_bias": heads(p["dt_bias"], 0), "A_log": heads(p["A_log"], 0), "D": heads(p["D"], 0),
        "norm": {"weight": heads(p["norm"]["weight"], 0, hd)},
        "out_proj": {"kernel": heads(p["out_proj"]["kernel"], 0, hd)[:, :d]},
    }


def _attention(p: dict, cfg: ModelConfig, spec: ElasticSpec, layer: int, d: int) -> dict:
    q, kv, hd = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer), cfg.head_dim
    per = q // kv
    kv_keep = spec.kv_heads(cfg, layer)
    q_keep = spec.width(cfg, "num_attention_heads", layer) // kv_keep

    def query(x: Array, axis: int) -> Array:  # kv-group major query heads: keep groups, then heads in groups
        return group_prefix(group_prefix(x, axis, 1, kv_keep, per * hd), axis, kv_keep, q_keep, hd)

    return {
        "q_proj": {"kernel": query(p["q_proj"]["kernel"][:d], 1)},
        "k_proj": {"kernel": p["k_proj"]["kernel"][:d, :kv_keep * hd]},
        "v_proj": {"kernel": p["v_proj"]["kernel"][:d, :kv_keep * hd]},
        "o_proj": {"kernel": query(p["o_proj"]["kernel"], 0)[:, :d]},
    }


def _mlp(p: dict, width: int, d: int) -> dict:
    return {"up_proj": {"kernel": p["up_proj"]["kernel"][:d, :width]},
            "down_proj": {"kernel": p["down_proj"]["kernel"][:width, :d]}}


def _moe(p: dict, cfg: ModelConfig, spec: ElasticSpec, layer: int, d: int) -> dict:
    keep = spec.width(cfg, "n_routed_experts", layer) // cfg.n_group
    f = spec.width(cfg, "moe_intermediate_size", layer)
    experts = lambda x, axis: group_prefix(x, axis, cfg.n_group, keep)  # noqa: E731
    return {
        "gate": experts(p["gate"][:d], 1),
        "e_score_correction_bias": experts(p["e_score_correction_bias"], 0),
        "up_proj": experts(p["up_proj"], 0)[:, :d, :f],
        "down_proj": experts(p["down_proj"], 0)[:, :f, :d],
        "shared_experts": _mlp(p["shared_experts"], spec.width(cfg, "moe_shared_expert_intermediate_size", layer), d),
    }


def slice_params(params: dict, cfg: ModelConfig, spec: ElasticSpec) -> tuple[dict, ModelConfig]:
    """(nested parameters, nested config): static prefix slices of a permuted parent (importance order first)."""
    sub_cfg = spec.apply_to(cfg)
    d = spec.hidden(cfg)
    out: dict[str, Any] = {"embeddings": {"embedding": params["embeddings"]["embedding"][:, :d]},
                           "norm_f": {"weight": params["norm_f"]["weight"][:d]},
                           "lm_head": {"kernel": params["lm_head"]["kernel"][:d]}}
    for new, layer in enumerate(spec.kept_layers(cfg)):
        p, kind = params[f"layers_{layer}"], cfg.pattern[layer]
        mixer = p["mixer"]
        if kind == "M":
            mixer = _mamba(mixer, cfg, spec, layer, d)
        elif kind == "*":
            mixer = _attention(mixer, cfg, spec, layer, d)
        elif kind == "E":
            mixer = _moe(mixer, cfg, spec, layer, d)
        else:
            mixer = _mlp(mixer, spec.width(cfg, "intermediate_size", layer), d)
        out[f"layers_{new}"] = {"norm": {"weight": p["norm"]["weight"][:d]}, "mixer": mixer}
    return out, sub_cfg


def _prefix(total: int, keep: int, groups: int = 1) -> np.ndarray:
    mask = np.zeros((groups, total // groups), np.float32)
    mask[:, :keep // groups] = 1.0
    return mask.reshape(-1)


def spec_masks(cfg: ModelConfig, spec: ElasticSpec) -> dict:
    """Hard 0/1 masks (numpy float32) under which the parent's masked forward equals the sliced model."""
    spec.validate(cfg)
    kept = set(spec.kept_layers(cfg))
    layers = []
    for layer, kind in enumerate(cfg.pattern):
        def w(name: str, layer: int = layer) -> int:
            return spec.width(cfg, name, layer)
        entry: dict[str, np.ndarray] = {"depth": np.float32(layer in kept)}
        if kind == "M":
            entry["mamba_heads"] = _prefix(cfg.mamba_heads(layer), w("mamba_num_heads"), cfg.mamba_n_groups)
        elif kind == "*":
            q, kv = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
            kv_keep = spec.kv_heads(cfg, layer)
            grid = np.zeros((kv, q // kv), np.float32)
            grid[:kv_keep, :w("num_attention_heads") // kv_keep] = 1.0
            entry["attention_heads"] = grid.reshape(-1)
        elif kind == "E":
            entry["experts"] = _prefix(cfg.width("n_routed_experts", layer), w("n_routed_experts"), cfg.n_group)
            entry["expert_ffn"] = _prefix(cfg.width("moe_intermediate_size", layer), w("moe_intermediate_size"))
            entry["shared_ffn"] = _prefix(cfg.width("moe_shared_expert_intermediate_size", layer),
                                          w("moe_shared_expert_intermediate_size"))
        else:
            entry["ffn"] = _prefix(cfg.width("intermediate_size", layer), w("intermediate_size"))
        layers.append(entry)
    return {"hidden": _prefix(cfg.hidden_size, spec.hidden(cfg)), "layers": layers}


def full_masks(cfg: ModelConfig) -> dict:
    """All-ones masks of the parent (the mask structure a router fills in)."""
    return spec_masks(cfg, ElasticSpec())

"""Seeded random elastic specs and rankings for the elastic tests."""

from __future__ import annotations

import numpy as np

from elastic_jax import ModelConfig
from elastic_jax.elastic.spec import WIDTH_FIELDS, ElasticSpec, min_experts


def _choices(cfg: ModelConfig, name: str, layer: int, mode: str) -> list[int]:
    """Every kept size of width field `name` that nests at `layer`."""
    full = cfg.width(name, layer)
    if name == "mamba_num_heads":
        step = low = cfg.mamba_n_groups
    elif name == "num_attention_heads":
        kv = cfg.width("num_key_value_heads", layer)
        step = low = full // kv if mode == "kv_groups" else kv
    elif name == "n_routed_experts":
        step, low = cfg.n_group, min_experts(cfg)
    else:
        step, low = 1, 1
    return list(range(low, full + 1, step))


def random_spec(cfg: ModelConfig, rng: np.random.Generator, *, homogeneous: bool, depth: bool = True) -> ElasticSpec:
    """A random spec nested in `cfg`: per-layer widths unless `homogeneous`, and maybe fewer layers."""
    mode = str(rng.choice(["kv_groups", "query_heads"]))
    values: dict = {"attention_mode": mode, "hidden_size": int(rng.integers(max(1, cfg.hidden_size // 3),
                                                                            cfg.hidden_size + 1))}
    for name, (_, char) in WIDTH_FIELDS.items():
        layers = [i for i, c in enumerate(cfg.pattern) if c == char]
        if not layers:
            continue
        if homogeneous:
            values[name] = int(rng.choice(_choices(cfg, name, layers[0], mode)))
        else:
            values[name] = tuple(int(rng.choice(_choices(cfg, name, i, mode))) if cfg.pattern[i] == char else 1
                                 for i in range(cfg.num_layers))
    if depth and cfg.num_layers > 1:
        keep = int(rng.integers(1, cfg.num_layers + 1))
        values["layers"] = tuple(sorted(int(i) for i in rng.choice(cfg.num_layers, keep, replace=False)))
    return ElasticSpec(**values)


def _grouped_perm(rng: np.random.Generator, size: int, groups: int) -> np.ndarray:
    """A random permutation that moves items only within each of `groups` equal blocks."""
    per = size // groups
    return np.concatenate([g * per + rng.permutation(per) for g in range(groups)])


def random_ranking(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """A random but structurally valid ranking of every axis (what a random importance order would give)."""
    layers = []
    for layer, kind in enumerate(cfg.pattern):
        if kind == "M":
            layers.append({"mamba_heads": _grouped_perm(rng, cfg.mamba_heads(layer), cfg.mamba_n_groups)})
        elif kind == "*":
            q, kv = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
            per = q // kv
            order = [g * per + rng.permutation(per) for g in rng.permutation(kv)]
            layers.append({"attention_heads": np.concatenate(order)})
        elif kind == "E":
            layers.append({"experts": _grouped_perm(rng, cfg.width("n_routed_experts", layer), cfg.n_group),
                           "expert_ffn": rng.permutation(cfg.width("moe_intermediate_size", layer)),
                           "shared_ffn": rng.permutation(cfg.width("moe_shared_expert_intermediate_size", layer))})
        else:
            layers.append({"ffn": rng.permutation(cfg.width("intermediate_size", layer))})
    return {"hidden": rng.permutation(cfg.hidden_size), "layers": layers,
            "depth": rng.permutation(cfg.num_layers)}


def fast_random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random parameters from shapes alone (no compiled init): kernels ~ N(0, 1/fan_in), non-trivial norms,
    decays, skips and routing biases, logits of order 1."""
    import jax

    from elastic_jax import param_shapes

    rng = np.random.default_rng(seed)
    special = {
        "A_log": lambda s: np.log(rng.uniform(1.0, 8.0, s)), "dt_bias": lambda s: rng.uniform(-4.0, -1.0, s),
        "D": lambda s: rng.uniform(0.5, 1.5, s), "weight": lambda s: rng.uniform(0.5, 1.5, s),
        "e_score_correction_bias": lambda s: rng.normal(0, 0.1, s), "conv_bias": lambda s: rng.normal(0, 0.2, s),
        "conv_kernel": lambda s: rng.normal(0, 0.5, s), "embedding": lambda s: rng.normal(0, 1.0, s),
    }

    def make(path, leaf):
        name = str(path[-1].key)
        if name in special:
            return special[name](leaf.shape).astype(np.float32)
        fan_in = leaf.shape[-2]
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(make, param_shapes(cfg))

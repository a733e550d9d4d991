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

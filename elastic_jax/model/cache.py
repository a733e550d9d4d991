"""Decode caches: attention K/V buffers, Mamba conv windows and SSM states, for a batch and a maximum length."""

from __future__ import annotations

import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.model.hybrid import compute_dtype
from elastic_jax.model.mamba2 import mamba_cache_shapes


def cache_shapes(cfg: ModelConfig, batch: int, max_len: int) -> list[dict[str, tuple[int, ...]] | None]:
    """Per-layer cache array shapes (None for layers without state)."""
    shapes: list[dict[str, tuple[int, ...]] | None] = []
    for layer, kind in enumerate(cfg.pattern):
        if kind == "M":
            shapes.append(mamba_cache_shapes(batch, cfg.mamba_heads(layer), cfg.mamba_head_dim, cfg.mamba_n_groups,
                                             cfg.ssm_state_size, cfg.conv_kernel))
        elif kind == "*":
            kv = (batch, max_len, cfg.width("num_key_value_heads", layer), cfg.head_dim)
            shapes.append({"k": kv, "v": kv})
        else:
            shapes.append(None)
    return shapes


def cache_dtypes(cfg: ModelConfig) -> dict[str, jnp.dtype]:
    """The SSM state is float32 (transformers' mamba_ssm_cache_dtype); the rest uses the compute dtype."""
    dt = compute_dtype(cfg)
    return {"conv": dt, "ssm": jnp.float32, "k": dt, "v": dt}


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """An empty cache at position 0."""
    dtypes = cache_dtypes(cfg)
    layers = [None if s is None else {k: jnp.zeros(shape, dtypes[k]) for k, shape in s.items()}
              for s in cache_shapes(cfg, batch, max_len)]
    return {"pos": jnp.zeros((), jnp.int32), "layers": layers}


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int) -> int:
    """Bytes a cache of this size allocates (used by memory accounting)."""
    dtypes = cache_dtypes(cfg)
    total = 0
    for s in cache_shapes(cfg, batch, max_len):
        for key, shape in (s or {}).items():
            count = 1
            for d in shape:
                count *= d
            total += count * jnp.dtype(dtypes[key]).itemsize
    return total

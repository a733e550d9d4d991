"""Decode caches: attention K/V buffers, Mamba conv windows and SSM states, for a batch and a maximum length.

The layout is defined here once: {"pos": int32 scalar, "layers": [per-layer dict or None]}, an attention layer's
dict holding `KEYS` and `VALUES` [batch, max_len, kv_heads, head_dim], a Mamba layer's `CONV` [batch, K-1,
channels] and `SSM` [batch, heads, head_dim, state] (float32). The mixers, the decode programs and the memory
reports read the names from here.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from elastic_jax.config import ModelConfig

KEYS, VALUES = "k", "v"  # attention: written at each token's position
CONV, SSM = "conv", "ssm"  # Mamba: the last K-1 inputs of the convolution, and the state
BY_POSITION = (KEYS, VALUES)  # buffers indexed by position (what a row has not reached yet is never read)


def mamba_cache_shapes(batch: int, num_heads: int, head_dim: int, n_groups: int, state_size: int,
                       conv_kernel: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one Mamba layer's decode cache."""
    conv_dim = num_heads * head_dim + 2 * n_groups * state_size
    return {CONV: (batch, conv_kernel - 1, conv_dim), SSM: (batch, num_heads, head_dim, state_size)}


def cache_shapes(cfg: ModelConfig, batch: int, max_len: int) -> list[dict[str, tuple[int, ...]] | None]:
    """Per-layer cache array shapes (None for layers without state)."""
    shapes: list[dict[str, tuple[int, ...]] | None] = []
    for layer, kind in enumerate(cfg.pattern):
        if kind == "M":
            shapes.append(mamba_cache_shapes(batch, cfg.mamba_heads(layer), cfg.mamba_head_dim, cfg.mamba_n_groups,
                                             cfg.ssm_state_size, cfg.conv_kernel))
        elif kind == "*":
            kv = (batch, max_len, cfg.width("num_key_value_heads", layer), cfg.head_dim)
            shapes.append({KEYS: kv, VALUES: kv})
        else:
            shapes.append(None)
    return shapes


def cache_dtypes(cfg: ModelConfig) -> dict[str, jnp.dtype]:
    """The SSM state is float32 (transformers' mamba_ssm_cache_dtype); the rest uses the compute dtype."""
    dt = jnp.dtype(cfg.compute_dtype)
    return {CONV: dt, SSM: jnp.dtype(jnp.float32), KEYS: dt, VALUES: dt}


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """An empty cache at position 0."""
    dtypes = cache_dtypes(cfg)
    layers = [None if s is None else {k: jnp.zeros(shape, dtypes[k]) for k, shape in s.items()}
              for s in cache_shapes(cfg, batch, max_len)]
    return {"pos": jnp.zeros((), jnp.int32), "layers": layers}


def bytes_by_kind(cache: dict) -> tuple[int, int]:
    """(attention K/V bytes, Mamba conv + SSM state bytes) of a cache's arrays (or their ShapeDtypeStructs)."""
    kv = state = 0
    for layer in cache["layers"]:
        for key, leaf in (layer or {}).items():
            nbytes = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
            kv, state = (kv + nbytes, state) if key in BY_POSITION else (kv, state + nbytes)
    return kv, state


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int) -> int:
    """Bytes a cache of this size allocates (used by memory accounting), from the shapes alone."""
    dtypes = cache_dtypes(cfg)
    return sum(math.prod(shape) * dtypes[key].itemsize
               for s in cache_shapes(cfg, batch, max_len) for key, shape in (s or {}).items())


__all__ = ["BY_POSITION", "CONV", "KEYS", "SSM", "VALUES", "bytes_by_kind", "cache_bytes", "cache_dtypes",
           "cache_shapes", "init_cache", "mamba_cache_shapes"]

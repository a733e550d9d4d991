"""Grouped-query causal self-attention with no positional encoding (Nemotron-H's `*` layers)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.cache import KEYS, VALUES
from elastic_jax.model.declare import ParamDecl, axis, by_name, dim, kernel, linear, linears
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks

QUERY = ("kv_heads", "q_per_kv", "head_dim")  # query heads are KV-group major


def attention_declarations(sizes: dict[str, int]) -> tuple[ParamDecl, ...]:
    """q: embed x kv_heads x q_per_kv x head_dim; k, v: embed x kv_heads x head_dim; o_proj the reverse of q."""
    embed, query, kv = axis("embed"), dim("heads", *QUERY), dim("kv_heads", "kv_heads", "head_dim")
    return (kernel("q_proj", embed, query, sizes), kernel("k_proj", embed, kv, sizes),
            kernel("v_proj", embed, kv, sizes), kernel("o_proj", query, embed, sizes))


class Attention(nn.Module):
    """GQA without RoPE or biases; scale head_dim^-0.5; softmax in float32.

    With a cache (KEYS, VALUES of shape [batch, max_len, kv_heads, head_dim], model/cache.py) the new keys and
    values are written at `pos` and the queries attend to every cached position up to their own.
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02
    target: CompileTarget = CompileTarget()

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer: int, *, dtype: jnp.dtype = jnp.float32, **module: Any) -> Attention:
        """The attention mixer of `layer` (its possibly per-layer head counts)."""
        return cls(hidden_size=cfg.hidden_size, num_heads=cfg.width("num_attention_heads", layer),
                   num_kv_heads=cfg.width("num_key_value_heads", layer), head_dim=cfg.head_dim, dtype=dtype,
                   init_std=cfg.initializer_range, **module)

    def declarations(self) -> tuple[ParamDecl, ...]:
        return attention_declarations({"embed": self.hidden_size, "kv_heads": self.num_kv_heads,
                                       "q_per_kv": self.num_heads // self.num_kv_heads, "head_dim": self.head_dim})

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, segment_ids: jax.Array | None = None):
        """`masks.attention_heads` [num_heads] (optional, query-head order) scales each head's output before o_proj.
        `segment_ids` [batch, length] (optional, no cache): packed documents; a query sees only its own document."""
        head_mask = masks.attention_heads
        batch, length, _ = x.shape
        decl, init = by_name(self.declarations()), nn.initializers.normal(self.init_std)
        q, k, v = linears(self, [decl[f"{name}_proj/kernel"] for name in "qkv"], x, self.dtype, init)
        q = q.reshape(batch, length, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim)
        k = k.reshape(batch, length, self.num_kv_heads, self.head_dim)
        v = v.reshape(batch, length, self.num_kv_heads, self.head_dim)

        q_pos = jnp.arange(length)
        new_cache, out = None, None
        groups = self.num_heads // self.num_kv_heads
        kernels = self.target.row_kernels(x, self.dtype) if cache is not None else None
        if kernels is not None and cache[KEYS].dtype == jnp.float32:  # a few queries, batch 1: attend in place
            out, k, v = kernels.attention(q[0], k[0], v[0], cache[KEYS], cache[VALUES], pos, self.head_dim ** -0.5)
            out, new_cache = out[None], {KEYS: k, VALUES: v}
        elif cache is not None:
            start = jnp.asarray(pos, jnp.int32)
            k = jax.lax.dynamic_update_slice(cache[KEYS], k.astype(cache[KEYS].dtype), (0, start, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[VALUES], v.astype(cache[VALUES].dtype), (0, start, 0, 0))
            new_cache = {KEYS: k, VALUES: v}
            q_pos = q_pos + start
        if out is None:
            out = self._attend(q, k, v, q_pos, segment_ids)
        if head_mask is not None:  # [batch, length, kv, groups, head_dim]: query heads are kv-group major
            out = out * head_mask.astype(out.dtype).reshape(self.num_kv_heads, groups, 1)
        out = out.reshape(batch, length, self.num_heads * self.head_dim)
        return linear(decl["o_proj/kernel"], self.dtype, init, self.target, "output")(out), new_cache

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array,
                segment_ids: jax.Array | None) -> jax.Array:
        """Causal attention of q [batch, length, kv, groups, head_dim] over k, v [batch, keys, kv, head_dim]
        (query i at position q_pos[i] sees keys 0..q_pos[i]) -> [batch, length, kv, groups, head_dim]."""
        batch, length = q.shape[:2]
        k_pos = jnp.arange(k.shape[1])
        visible = k_pos[None, :] <= q_pos[:, None]  # causal; also hides unwritten cache slots

        # Fold the query heads of a KV group into the query axis: one [g*q, s] product per KV head, a layout
        # XLA's CPU matmuls handle far better than a 5-D einsum.
        groups = self.num_heads // self.num_kv_heads
        qf = q.transpose(0, 2, 3, 1, 4).reshape(batch, self.num_kv_heads, groups * length, self.head_dim)
        kt = k.astype(q.dtype).transpose(0, 2, 1, 3)
        scores = jnp.einsum("bkqd,bksd->bkqs", qf, kt).astype(jnp.float32) * (self.head_dim ** -0.5)
        visible = jnp.tile(visible, (groups, 1))
        if segment_ids is not None:  # [batch, 1, groups * q, s]: keys of other documents are invisible
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            visible = visible & jnp.tile(same, (1, groups, 1))[:, None]
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkqs,bksd->bkqd", probs, v.astype(self.dtype).transpose(0, 2, 1, 3))
        return out.reshape(batch, self.num_kv_heads, groups, length, self.head_dim).transpose(0, 3, 1, 2, 4)

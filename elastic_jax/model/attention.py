"""Grouped-query causal self-attention with no positional encoding (Nemotron-H's `*` layers)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.model.mlp import dense


class Attention(nn.Module):
    """GQA without RoPE or biases; scale head_dim^-0.5; softmax in float32.

    With a cache ({"k", "v"} of shape [batch, max_len, kv_heads, head_dim]) the new keys and values are
    written at `pos` and the queries attend to every cached position up to their own.
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None = None, pos: jax.Array | None = None):
        batch, length, _ = x.shape
        q = dense(self.num_heads * self.head_dim, self.dtype, "q_proj", self.init_std)(x)
        k = dense(self.num_kv_heads * self.head_dim, self.dtype, "k_proj", self.init_std)(x)
        v = dense(self.num_kv_heads * self.head_dim, self.dtype, "v_proj", self.init_std)(x)
        q = q.reshape(batch, length, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim)
        k = k.reshape(batch, length, self.num_kv_heads, self.head_dim)
        v = v.reshape(batch, length, self.num_kv_heads, self.head_dim)

        q_pos = jnp.arange(length)
        new_cache = None
        if cache is not None:
            start = jnp.asarray(pos, jnp.int32)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, start, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, start, 0, 0))
            new_cache = {"k": k, "v": v}
            q_pos = q_pos + start
        k_pos = jnp.arange(k.shape[1])
        visible = k_pos[None, :] <= q_pos[:, None]  # causal; also hides unwritten cache slots

        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k.astype(q.dtype)).astype(jnp.float32)
        scores = scores * (self.head_dim ** -0.5)
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v.astype(self.dtype))
        out = out.reshape(batch, length, self.num_heads * self.head_dim)
        return dense(self.hidden_size, self.dtype, "o_proj", self.init_std)(out), new_cache

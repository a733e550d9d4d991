"""RMSNorm and the gated, group-wise RMSNorm of the Mamba-2 mixer, computed in float32 as transformers does."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(variance + eps)


class RMSNorm(nn.Module):
    """Pre-norm of every block and the final norm: weight * rms_normalize(x)."""

    dim: int
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (self.dim,), jnp.float32)
        return (weight * rms_normalize(x, self.eps)).astype(self.dtype)


class GatedGroupRMSNorm(nn.Module):
    """Mamba-2 output norm: rms_normalize(y * silu(z)) over `groups` equal slices of the channels."""

    dim: int
    groups: int
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array, z: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (self.dim,), jnp.float32)
        gated = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
        grouped = gated.reshape(*gated.shape[:-1], self.groups, self.dim // self.groups)
        normed = rms_normalize(grouped, self.eps).reshape(gated.shape)
        return (weight * normed).astype(self.dtype)

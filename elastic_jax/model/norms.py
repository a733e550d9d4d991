"""RMSNorm and the gated, group-wise RMSNorm of the Mamba-2 mixer, computed in float32 as transformers does."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def rms_normalize(x: jax.Array, eps: float, mask: jax.Array | None = None) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in float32.

    With a channel mask the mean is the mask-weighted mean (sum(x^2 m) / sum(m)): a hard 0/1 mask gives exactly
    the norm of the kept channels alone, which is what a sliced (narrower) model computes.
    """
    x = x.astype(jnp.float32)
    if mask is None:
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    else:
        mask = jnp.broadcast_to(mask.astype(jnp.float32), x.shape)
        kept = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1e-6)
        variance = jnp.sum(jnp.square(x) * mask, axis=-1, keepdims=True) / kept
    return x * jax.lax.rsqrt(variance + eps)


class RMSNorm(nn.Module):
    """Pre-norm of every block and the final norm: weight * rms_normalize(x)."""

    dim: int
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`mask` [dim] (optional): hidden-channel mask; the variance is taken over the kept channels."""
        weight = self.param("weight", nn.initializers.ones, (self.dim,), jnp.float32)
        return (weight * rms_normalize(x, self.eps, mask)).astype(self.dtype)


class GatedGroupRMSNorm(nn.Module):
    """Mamba-2 output norm: rms_normalize(y * silu(z)) over `groups` equal slices of the channels."""

    dim: int
    groups: int
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array, z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`mask` [dim] (optional): channel mask; each group's variance is over its kept channels, and the
        output is multiplied by the mask (a hard mask equals the norm of a model with fewer heads per group)."""
        weight = self.param("weight", nn.initializers.ones, (self.dim,), jnp.float32)
        gated = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
        grouped = gated.reshape(*gated.shape[:-1], self.groups, self.dim // self.groups)
        if mask is None:
            normed = rms_normalize(grouped, self.eps).reshape(gated.shape)
        else:
            grouped_mask = mask.astype(jnp.float32).reshape(self.groups, self.dim // self.groups)
            normed = (rms_normalize(grouped, self.eps, grouped_mask) * grouped_mask).reshape(gated.shape)
        return (weight * normed).astype(self.dtype)

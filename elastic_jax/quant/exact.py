"""Correctly rounded float32 division in numpy and JAX alike.

XLA rewrites a division by a broadcast value (`x / scale`, `blocks / scale[..., None]`) into a multiplication by
its reciprocal, which is off by one unit in the last place for about half of all inputs and would move values
across rounding boundaries of the quantised formats. Broadcasting the divisor to the full shape behind an
optimisation barrier keeps the division elementwise, so JAX gives numpy's bits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def div(a: Any, b: Any, xp: Any = np) -> Any:
    """a / b in float32 with IEEE rounding under both backends (`b` broadcasts to `a`'s shape)."""
    if xp is np:
        return np.asarray(a, np.float32) / np.asarray(b, np.float32)
    a = jnp.asarray(a, jnp.float32)
    return a / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, jnp.float32), a.shape))


__all__ = ["div"]

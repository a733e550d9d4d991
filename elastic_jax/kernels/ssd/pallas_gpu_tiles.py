"""In-kernel arithmetic on one chunk's tiles, shared by the forward and backward Pallas GPU SSD kernels.

Everything is float32; dots are 2-D `tl.dot`s at IEEE fp32 precision (`precision=HIGHEST`), as the XLA path uses.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST
F32 = jnp.float32


def _dot(a: jax.Array, b: jax.Array, ca: int, cb: int) -> jax.Array:
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), precision=_HI, preferred_element_type=F32)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b."""
    return _dot(a, b, 1, 0)


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a^T @ b."""
    return _dot(a, b, 0, 0)


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b^T."""
    return _dot(a, b, 1, 1)


class Decays(NamedTuple):
    """One chunk's decay factors, with every path that crosses a document start cut to zero."""

    decay: jax.Array  # [q, q]: exp(acum[l] - acum[s]) where step s (column) reaches step l (row), else 0
    e: jax.Array  # [q]: decay of the incoming state to step l
    w: jax.Array  # [q]: decay from step l to the chunk's end (into the outgoing state)


def decays(acum: jax.Array, total: jax.Array, rk: jax.Array | None) -> Decays:
    """`acum` [q] the chunk cumsum of dt * A, `total` its last entry, `rk` [q] the document starts up to each step
    (or None). The exponent is masked before `exp`, so nothing overflows and masked entries are exactly zero."""
    q = acum.shape[0]
    idx = lax.broadcasted_iota(jnp.int32, (q, q), 0)
    visible = lax.broadcasted_iota(jnp.int32, (q, q), 1) <= idx
    e, w = jnp.exp(acum), jnp.exp(total - acum)
    if rk is not None:
        last = jnp.max(rk)
        visible = visible & (rk[:, None] == rk[None, :])
        e, w = jnp.where(rk == 0, e, 0.0), jnp.where(rk == last, w, 0.0)
    decay = jnp.where(visible, jnp.exp(jnp.where(visible, acum[:, None] - acum[None, :], 0.0)), 0.0)
    return Decays(decay, e, w)


def reverse_cumsum(v: jax.Array, rk: jax.Array | None) -> jax.Array:
    """out[t] = sum of v[u] over the u >= t in t's document, as a masked row sum: Triton has no reverse cumsum, and
    terms that cancel across a document start (exactly, but not in floating point) are never added."""
    q = v.shape[0]
    later = lax.broadcasted_iota(jnp.int32, (q, q), 1) >= lax.broadcasted_iota(jnp.int32, (q, q), 0)
    if rk is not None:
        later = later & (rk[:, None] == rk[None, :])
    return jnp.sum(jnp.where(later, v[None, :], 0.0), axis=1)

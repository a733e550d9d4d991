"""Correctly rounded float32 division in numpy and JAX alike, on CPUs and GPUs.

XLA does not give IEEE float32 division: on CPUs it rewrites a division by a broadcast value (`x / scale`,
`blocks / scale[..., None]`) into a multiplication by the reciprocal, and on GPUs float32 division itself is an
approximation; both are off by a unit in the last place for a large share of inputs, which moves values across
the rounding boundaries of the quantised formats. So JAX divides here with integer arithmetic (exact on every
backend): the 24-bit significands are divided bit by bit, and the quotient is rounded to nearest, ties to even,
subnormal results included. numpy's division is IEEE already.

XLA may also drop a float32 -> float8 -> float32 round trip inside one program (it allows excess precision), which
would quietly skip the E4M3 rounding of a block scale or of a fake-quantised value; `rounded` pins such a cast.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_HIDDEN = 1 << 23


def _unpack(bits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(significand with its leading bit at 2^23, unbiased-plus-127 exponent) of a finite, non-zero |float32|;
    subnormals are normalised."""
    exp = (bits >> 23) & 0xFF
    frac = bits & (_HIDDEN - 1)
    mant = jnp.where(exp == 0, frac, frac | _HIDDEN)
    exp = jnp.where(exp == 0, 1, exp)
    shift = jnp.maximum(jax.lax.clz(mant) - 8, 0)  # subnormals: move the leading bit up to 2^23
    return mant << shift, exp - shift


def _div_jax(a: jax.Array, b: jax.Array) -> jax.Array:
    """a / b for float32 arrays of one shape, rounded to nearest even with integer operations only."""
    ia, ib = jax.lax.bitcast_convert_type(a, jnp.int32), jax.lax.bitcast_convert_type(b, jnp.int32)
    sign = (ia ^ ib) & jnp.int32(-(1 << 31))
    ma, ea = _unpack(ia & 0x7FFFFFFF)
    mb, eb = _unpack(ib & 0x7FFFFFFF)
    below = ma < mb  # make the significand quotient lie in [1, 2)
    ma = jnp.where(below, ma << 1, ma)
    e = ea - eb + 127 - below.astype(jnp.int32)  # biased exponent of the quotient
    q, r = jnp.zeros_like(ma), ma
    for _ in range(26):  # 1 integer bit, 23 fraction bits, a guard bit and a round bit
        bit = r >= mb
        q = (q << 1) | bit.astype(jnp.int32)
        r = jnp.where(bit, r - mb, r) << 1
    sticky = r != 0
    shift = jnp.minimum(2 + jnp.maximum(1 - e, 0), 28)  # subnormal quotients lose more bits
    kept = q >> shift
    rest = q & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    up = (rest > half) | ((rest == half) & (sticky | ((kept & 1) == 1)))
    kept = kept + up.astype(jnp.int32)
    # the hidden bit in `kept` adds one to the exponent field; a rounding carry into 2^24 moves it up once more
    bits = ((jnp.maximum(e, 1) - 1) << 23) + kept
    bits = jnp.where(e >= 255, 0x7F800000, bits) | sign
    out = jax.lax.bitcast_convert_type(bits, jnp.float32)
    special = (a == 0) | (b == 0) | ~jnp.isfinite(a) | ~jnp.isfinite(b)
    return jnp.where(special, a / b, out)


def div(a: Any, b: Any, xp: Any = np) -> Any:
    """a / b in float32 with IEEE rounding under both backends (`b` broadcasts to `a`'s shape)."""
    if xp is np:
        return np.asarray(a, np.float32) / np.asarray(b, np.float32)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    return _div_jax(jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape))


def rounded(x: Any, xp: Any = np) -> Any:
    """`x` (just cast to a narrow float type) kept as it is: XLA may not fold a later cast back into the earlier one."""
    return x if xp is np else jax.lax.optimization_barrier(x)


__all__ = ["div", "rounded"]

"""JAX float32 division bit-identical to numpy's IEEE division (what the quantisers' JAX paths rely on)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.quant.exact import div


def _assert_ieee(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    with np.errstate(all="ignore"):
        want = a / b
    got = np.asarray(jax.jit(lambda x, y: div(x, y, jnp))(a, b))
    same = (got.view(np.int32) == want.view(np.int32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (a[~same][:4], b[~same][:4], got[~same][:4], want[~same][:4])


def test_random_bit_patterns_ties_and_subnormals():
    rng = np.random.default_rng(0)
    n = 100_000
    a = rng.integers(0, 0x7F800000, size=n).astype(np.int32).view(np.float32) * rng.choice([-1, 1], n)
    b = rng.integers(1, 0x7F800000, size=n).astype(np.int32).view(np.float32)
    _assert_ieee(a, b)  # overflow to inf, underflow to subnormals and zero, subnormal operands
    b = rng.uniform(0.01, 10, size=n).astype(np.float32)
    t = rng.choice(np.array([0.25, 0.75, 1.25, 2.5, 3.5, 5.0, 448, 1.0625], np.float32), size=n)
    _assert_ieee(t * b, b)  # exact quotients and E2M1 / E4M3 ties
    _assert_ieee(rng.normal(size=n), np.float32(448.0))  # a broadcast divisor (XLA would use a reciprocal)
    _assert_ieee([0.0, -0.0, 1.0, -1.0, np.inf, 1e-45], [3.0, 3.0, 0.0, 0.0, 2.0, 3.0])

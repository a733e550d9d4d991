"""Wrap a forward-only SSD kernel in a custom_vjp whose backward is the (recomputed) VJP of the XLA implementation."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from elastic_jax.kernels.ssd.xla import ssd_xla

ForwardFn = Callable[..., tuple[jax.Array, jax.Array]]


def with_xla_backward(forward: ForwardFn) -> ForwardFn:
    """Return f(x, dt, A, B, C, D, initial_state, chunk_size, interpret) = forward(...) with the XLA VJP as backward."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
    def f(x, dt, A, B, C, D, initial_state, chunk_size: int, interpret: bool):
        return forward(x, dt, A, B, C, D, initial_state, chunk_size, interpret)

    def f_fwd(x, dt, A, B, C, D, initial_state, chunk_size, interpret):
        out = forward(x, dt, A, B, C, D, initial_state, chunk_size, interpret)
        return out, (x, dt, A, B, C, D, initial_state)

    def f_bwd(chunk_size, interpret, residuals, cotangents):
        del interpret
        _, vjp = jax.vjp(lambda *args: ssd_xla(*args, chunk_size), *residuals)
        return vjp(cotangents)

    f.defvjp(f_fwd, f_bwd)
    return f

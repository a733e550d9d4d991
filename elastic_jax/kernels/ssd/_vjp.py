"""Wrap a forward-only SSD kernel in a custom_vjp whose backward is the (recomputed) VJP of the XLA implementation."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from elastic_jax.kernels.ssd.xla import ssd_xla

ForwardFn = Callable[..., tuple[jax.Array, jax.Array]]


def with_xla_backward(forward: ForwardFn) -> ForwardFn:
    """Return f(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret) = forward(...) with the XLA VJP
    as backward (seq_idx, integer document ids or None, gets no cotangent)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
    def f(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size: int, interpret: bool):
        return forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)

    def f_fwd(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret):
        out = forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)
        return out, ((x, dt, A, B, C, D, initial_state), seq_idx)

    def f_bwd(chunk_size, interpret, residuals, cotangents):
        del interpret
        args, seq_idx = residuals
        _, vjp = jax.vjp(lambda *a: ssd_xla(*a, chunk_size, seq_idx), *args)
        return (*vjp(cotangents), None)

    f.defvjp(f_fwd, f_bwd)
    return f

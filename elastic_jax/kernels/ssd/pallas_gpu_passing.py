"""State passing between chunks, forward and backward: the only sequential part of the Pallas GPU SSD scan.

One program per (batch, head, slice of the state's n rows) walks the chunks in order (backward: in reverse) with
`lax.fori_loop`; each step is an elementwise multiply-add on a [rows, p] slice, so the walk is cheap and the slices
give the GPU many programs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from elastic_jax.kernels.ssd.pallas_gpu_tiles import F32

_SLICE_VALUES = 2048  # fp32 values of one program's state slice (registers, not shared memory)


def _rows_per_program(n: int, p: int) -> int:
    """Rows of the [n, p] state per program: a divisor of n with at most _SLICE_VALUES values (at least one row)."""
    return math.gcd(n, max(1, _SLICE_VALUES // p))


def _specs(c: int, rows: int, p: int):
    """Block specs on the (batch, head, slice) grid: chunk-major states, per-chunk scalars, one state."""
    chunks = pl.BlockSpec((None, c, None, rows, p), lambda i, j, s: (i, 0, j, s, 0))
    scalars = pl.BlockSpec((None, c, None), lambda i, j, s: (i, 0, j))
    one = pl.BlockSpec((None, None, rows, p), lambda i, j, s: (i, j, s, 0))
    return chunks, scalars, one


def _forward_kernel(st_ref, et_ref, s0_ref, entry_ref, final_ref, *, num_chunks: int):
    def body(k, s):
        entry_ref[k] = s
        return et_ref[k] * s + st_ref[k]

    final_ref[...] = lax.fori_loop(0, num_chunks, body, s0_ref[...])


def _backward_kernel(dl_ref, entry_ref, et_ref, dfinal_ref, dout_ref, dtot_ref, ds0_ref, *, num_chunks: int):
    def body(t, g):  # g: cotangent of the state leaving chunk k
        k = num_chunks - 1 - t
        dout_ref[k] = g
        e = et_ref[k]
        dtot_ref[k] = jnp.sum(entry_ref[k] * g) * e
        return dl_ref[k] + e * g

    ds0_ref[...] = lax.fori_loop(0, num_chunks, body, dfinal_ref[...])


def _params(rows: int, p: int) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=4 if rows * p <= 1024 else 8, num_stages=2)  # loads of chunk k+1 overlap


def pass_states(st: jax.Array, et: jax.Array, s0: jax.Array, interpret: bool) -> tuple[jax.Array, jax.Array]:
    """st [b, c, h, n, p] chunk contributions, et [b, c, h] whole-chunk decays, s0 [b, h, n, p] -> (entry
    [b, c, h, n, p]: the state entering each chunk, final [b, h, n, p])."""
    b, c, h, n, p = st.shape
    rows = _rows_per_program(n, p)
    chunks, scalars, one = _specs(c, rows, p)
    return pl.pallas_call(
        functools.partial(_forward_kernel, num_chunks=c),
        out_shape=(jax.ShapeDtypeStruct(st.shape, F32), jax.ShapeDtypeStruct(s0.shape, F32)),
        grid=(b, h, n // rows),
        in_specs=[chunks, scalars, one],
        out_specs=[chunks, one],
        compiler_params=_params(rows, p),
        interpret=interpret,
        name="ssd_state_passing_gpu",
    )(st, et, s0)


def pass_states_back(d_local: jax.Array, entry: jax.Array, et: jax.Array, d_final: jax.Array, interpret: bool):
    """Reverse walk. d_local [b, c, h, n, p]: cotangent of each chunk's entry state from its own outputs; entry as
    `pass_states` gave it; d_final [b, h, n, p]. Returns (d_out [b, c, h, n, p]: cotangent of the state leaving each
    chunk, d_total [b, c, h]: of each chunk's summed dt * A through the carried state, d_s0 [b, h, n, p])."""
    b, c, h, n, p = entry.shape
    rows = _rows_per_program(n, p)
    chunks, scalars, one = _specs(c, rows, p)
    slices = pl.BlockSpec((None, c, None, None), lambda i, j, s: (i, 0, j, s))
    d_out, d_total, d_s0 = pl.pallas_call(
        functools.partial(_backward_kernel, num_chunks=c),
        out_shape=(jax.ShapeDtypeStruct(entry.shape, F32), jax.ShapeDtypeStruct((b, c, h, n // rows), F32),
                   jax.ShapeDtypeStruct(d_final.shape, F32)),
        grid=(b, h, n // rows),
        in_specs=[chunks, chunks, scalars, one],
        out_specs=[chunks, slices, one],
        compiler_params=_params(rows, p),
        interpret=interpret,
        name="ssd_state_passing_bwd_gpu",
    )(d_local, entry, et, d_final)
    return d_out, jnp.sum(d_total, axis=-1), d_s0

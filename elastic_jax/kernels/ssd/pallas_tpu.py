"""Pallas Mosaic-TPU kernel for the chunked SSD scan (forward); backward is the recomputed VJP of `ssd_xla`.

Grid (batch, heads, chunks): batch and heads are "parallel", the chunk axis is "arbitrary" and carries the
[state, head_dim] SSM state in a VMEM scratch buffer from one chunk to the next. Per chunk the kernel computes the
intra-chunk quadratic block (C B^T masked by the decay matrix), the contribution of the incoming state, and the
outgoing state, all as 2-D matmuls in float32. Layouts are chosen so no in-kernel transposes are needed
(B is passed transposed as [state, chunk]; the state is kept as [state, head_dim]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from elastic_jax.kernels.ssd._shard import sharded_over_mesh
from elastic_jax.kernels.ssd._vjp import with_xla_backward
from elastic_jax.kernels.ssd.xla import document_starts_per_chunk, pad_to_chunks

_HI = lax.Precision.HIGHEST


def supports(x_shape: tuple[int, ...], b_shape: tuple[int, ...], chunk_size: int, dtype: jnp.dtype) -> bool:
    """Whether the compiled TPU kernel handles these static shapes (Mosaic (8, 128) tiling); else "auto" falls back."""
    if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
        return False  # XLA cannot partition a Mosaic call; under jax.set_mesh it runs in a shard_map (_shard.py)
    p, n = x_shape[3], b_shape[3]
    dtype_ok = jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
    return dtype_ok and chunk_size % 128 == 0 and p % 8 == 0 and n % 8 == 0


def _ssd_chunk_kernel(
    a_ref, d_ref, x_ref, dtc_ref, dtr_ref, bt_ref, c_ref, s0_ref, *refs, num_chunks: int, documents: bool
):
    """One (batch, head, chunk) grid step: y for the chunk, and the state update in VMEM scratch. With `documents`
    the first two `refs` hold, as a column and as a row, how many documents start in the chunk up to each step."""
    rcc_ref, rcr_ref, y_ref, sf_ref, state_ref = refs if documents else (None, None, *refs)
    f32 = jnp.float32
    head, chunk = pl.program_id(1), pl.program_id(2)

    @pl.when(chunk == 0)
    def _load_initial_state():
        state_ref[...] = s0_ref[...]

    a_h, d_h = a_ref[head], d_ref[head]
    x = x_ref[...].astype(f32)  # [q, p]
    dt_col = dtc_ref[...]  # [q, 1]
    dt_row = dtr_ref[...]  # [1, q]
    q = x.shape[0]
    a_col, a_row = dt_col * a_h, dt_row * a_h
    row = lax.broadcasted_iota(jnp.int32, (q, q), 0)
    col = lax.broadcasted_iota(jnp.int32, (q, q), 1)
    causal = col <= row
    # Inclusive cumulative sums of a = dt * A, as a column and as a row, by masked reductions (no transposes).
    acum_col = jnp.sum(jnp.where(causal, jnp.broadcast_to(a_row, (q, q)), 0.0), axis=1, keepdims=True)
    acum_row = jnp.sum(jnp.where(row <= col, jnp.broadcast_to(a_col, (q, q)), 0.0), axis=0, keepdims=True)
    total = jnp.sum(a_row, axis=1, keepdims=True)  # [1, 1]
    e, w, et, visible = jnp.exp(acum_col), jnp.exp(total - acum_col), jnp.exp(total), causal
    if documents:  # cut every decay path that crosses a document start
        rc_col, rc_row = rcc_ref[...], rcr_ref[...]  # [q, 1], [1, q]
        last = jnp.max(rc_row, axis=1, keepdims=True)  # [1, 1]
        visible = causal & (rc_col == rc_row)
        e, w, et = jnp.where(rc_col == 0, e, 0.0), jnp.where(rc_col == last, w, 0.0), jnp.where(last == 0, et, 0.0)
    decay = jnp.where(visible, jnp.exp(jnp.where(visible, acum_col - acum_row, 0.0)), 0.0)

    bt = bt_ref[...].astype(f32)  # [n, q]
    c = c_ref[...].astype(f32)  # [q, n]
    state = state_ref[...]  # [n, p]
    cb = jnp.dot(c, bt, precision=_HI, preferred_element_type=f32)  # [q, q]
    y = jnp.dot(cb * decay * dt_row, x, precision=_HI, preferred_element_type=f32)
    y = y + jnp.dot(c, state, precision=_HI, preferred_element_type=f32) * e
    y_ref[...] = (y + d_h * x).astype(y_ref.dtype)

    w = w * dt_col  # [q, 1]
    new_state = et * state + jnp.dot(bt, x * w, precision=_HI, preferred_element_type=f32)
    state_ref[...] = new_state

    @pl.when(chunk == num_chunks - 1)
    def _store_final_state():
        sf_ref[...] = new_state


def _forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size: int, interpret: bool):
    """Lay inputs out head-major, run the kernel, restore [b, L, h, p] / [b, h, p, n] layouts."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, q = h // g, chunk_size
    f32 = jnp.float32
    xp, bp, cp = (pad_to_chunks(v, q) for v in (x, B, C))
    dtp = pad_to_chunks(dt.astype(f32), q)
    lp = xp.shape[1]
    nc = lp // q
    xt = xp.transpose(0, 2, 1, 3)  # [b, h, Lp, p]
    dt_t = dtp.transpose(0, 2, 1)  # [b, h, Lp]
    dt_col = dt_t[..., None]  # [b, h, Lp, 1]
    dt_row = dt_t.reshape(b, h, nc, 1, q)
    bt = bp.transpose(0, 2, 3, 1)  # [b, g, n, Lp]
    ct = cp.transpose(0, 2, 1, 3)  # [b, g, Lp, n]
    s0 = jnp.zeros((b, h, n, p), f32) if initial_state is None else initial_state.astype(f32).transpose(0, 1, 3, 2)
    d = jnp.zeros((h,), f32) if D is None else D.astype(f32)

    smem = pl.BlockSpec(memory_space=pltpu.SMEM)
    in_specs = [
        smem,
        smem,
        pl.BlockSpec((None, None, q, p), lambda i, j, k: (i, j, k, 0)),
        pl.BlockSpec((None, None, q, 1), lambda i, j, k: (i, j, k, 0)),
        pl.BlockSpec((None, None, None, 1, q), lambda i, j, k: (i, j, k, 0, 0)),
        pl.BlockSpec((None, None, n, q), lambda i, j, k: (i, lax.div(j, r), 0, k)),
        pl.BlockSpec((None, None, q, n), lambda i, j, k: (i, lax.div(j, r), k, 0)),
        pl.BlockSpec((None, None, n, p), lambda i, j, k: (i, j, 0, 0)),
    ]
    inputs = [A.astype(f32), d, xt, dt_col, dt_row, bt, ct, s0]
    if seq_idx is not None:  # laid out like dt: a column [b, h, Lp, 1] and rows [b, h, nc, 1, q]
        rc = document_starts_per_chunk(seq_idx, q).transpose(1, 0, 2).reshape(b, 1, lp).astype(f32)
        rc = jnp.broadcast_to(rc, (b, h, lp))
        inputs += [rc[..., None], rc.reshape(b, h, nc, 1, q)]
        in_specs += in_specs[3:5]
    out_specs = [
        pl.BlockSpec((None, None, q, p), lambda i, j, k: (i, j, k, 0)),
        pl.BlockSpec((None, None, n, p), lambda i, j, k: (i, j, 0, 0)),
    ]
    flops = 2 * b * h * nc * (q * q * n + q * q * p + 2 * q * n * p)
    bytes_accessed = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in (xt, xt, dt_t, bt, ct))
    y_t, sf = pl.pallas_call(
        functools.partial(_ssd_chunk_kernel, num_chunks=nc, documents=seq_idx is not None),
        out_shape=(jax.ShapeDtypeStruct((b, h, lp, p), x.dtype), jax.ShapeDtypeStruct((b, h, n, p), f32)),
        grid=(b, h, nc),
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((n, p), f32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        cost_estimate=pl.CostEstimate(
            flops=flops, transcendentals=b * h * nc * q * (q + 2), bytes_accessed=bytes_accessed
        ),
        name="ssd_chunk_scan_tpu",
    )(*inputs)
    y = y_t.transpose(0, 2, 1, 3)[:, :seqlen]
    return y, sf.transpose(0, 1, 3, 2)


# `lax.div` in the index maps, not `//`: floor division lowers to a `sign` whose Mosaic rule asks the host
# backend for its TPU generation (fails when compiling for a TPU topology from a CPU host).
_ssd_pallas_tpu = with_xla_backward(sharded_over_mesh(_forward))


def ssd_pallas_tpu(x, dt, A, B, C, D, initial_state, *, chunk_size: int, interpret: bool = False, seq_idx=None):
    """Chunked SSD on TPU via Pallas (or the TPU interpreter when interpret=True); backward = VJP of `ssd_xla`.
    `seq_idx` [b, L] int (optional): packed documents, the state restarts at each document start."""
    return _ssd_pallas_tpu(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)

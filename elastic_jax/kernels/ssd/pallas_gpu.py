"""Pallas GPU (Triton lowering) kernel for the chunked SSD scan (forward); backward is the recomputed VJP of `ssd_xla`.

One program per (batch, head) walks the chunks in order with `lax.fori_loop`, keeping the [state, head_dim] SSM
state in registers; per chunk it does the intra-chunk quadratic block, the incoming-state term and the state update
as 2-D float32 `tl.dot`s. Triton needs power-of-two block sizes >= 16 for chunk, head_dim and state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from elastic_jax.kernels.ssd._vjp import with_xla_backward
from elastic_jax.kernels.ssd.xla import document_starts_per_chunk, pad_to_chunks

_HI = lax.Precision.HIGHEST


def _pow2_at_least_16(v: int) -> bool:
    return v >= 16 and (v & (v - 1)) == 0


def supports(x_shape: tuple[int, ...], b_shape: tuple[int, ...], chunk_size: int, dtype: jnp.dtype) -> bool:
    """Whether the compiled Triton kernel handles these static shapes; otherwise "auto" falls back to XLA."""
    if jax.default_backend() != "gpu":
        return False
    p, n = x_shape[3], b_shape[3]
    dtype_ok = jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    # Register pressure: the [chunk, chunk] decay block and the [state, head_dim] state live in registers.
    return dtype_ok and all(_pow2_at_least_16(v) for v in (chunk_size, p, n)) and chunk_size <= 128 and p * n <= 16384


def _kernel_block(chunk_size: int, p: int, n: int) -> int:
    """Rows per kernel step: the model's chunk, halved until chunk * (chunk + p + 2n) fp32 values stay within 40960."""
    q = chunk_size
    while q > 16 and q * (q + p + 2 * n) > 40960:
        q //= 2
    return q


def _ssd_program(a_ref, d_ref, x_ref, dt_ref, b_ref, c_ref, s0_ref, *refs, chunk_size: int, num_chunks: int,
                 documents: bool):
    """All chunks of one (batch, head): y and the final state. With `documents` the first of `refs` holds, per
    step, how many documents start in its chunk up to it (see xla.document_starts_per_chunk)."""
    rc_ref, y_ref, sf_ref = refs if documents else (None, *refs)
    f32 = jnp.float32
    q = chunk_size
    head = pl.program_id(1)
    a_h = a_ref[head]
    d_h = d_ref[head]
    idx = jnp.arange(q)
    causal = idx[None, :] <= idx[:, None]

    def body(k, state):  # state [n, p]
        sl = pl.ds(pl.multiple_of(k * q, q), q)
        x = x_ref[sl, :].astype(f32)  # [q, p]
        dt = dt_ref[sl]  # [q]
        bm = b_ref[sl, :].astype(f32)  # [q, n]
        cm = c_ref[sl, :].astype(f32)  # [q, n]
        acum = jnp.cumsum(dt * a_h)
        total = jnp.sum(dt * a_h)
        e, w, et, visible = jnp.exp(acum), jnp.exp(total - acum), jnp.exp(total), causal
        if documents:  # cut every decay path that crosses a document start
            rk = rc_ref[sl]
            last = jnp.max(rk)
            visible = causal & (rk[:, None] == rk[None, :])
            e, w, et = jnp.where(rk == 0, e, 0.0), jnp.where(rk == last, w, 0.0), jnp.where(last == 0, et, 0.0)
        decay = jnp.where(visible, jnp.exp(jnp.where(visible, acum[:, None] - acum[None, :], 0.0)), 0.0)
        cb = lax.dot_general(cm, bm, (((1,), (1,)), ((), ())), precision=_HI, preferred_element_type=f32)
        y = jnp.dot(cb * decay * dt[None, :], x, precision=_HI, preferred_element_type=f32)
        y = y + jnp.dot(cm, state, precision=_HI, preferred_element_type=f32) * e[:, None]
        y_ref[sl, :] = (y + d_h * x).astype(y_ref.dtype)
        xw = x * (w * dt)[:, None]
        upd = lax.dot_general(bm, xw, (((0,), (0,)), ((), ())), precision=_HI, preferred_element_type=f32)
        return et * state + upd

    sf_ref[...] = lax.fori_loop(0, num_chunks, body, s0_ref[...])


def _forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size: int, interpret: bool):
    """Lay inputs out head-major, run one program per (batch, head), restore the public layouts."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    # The kernel's block need not be the model's chunk (chunked SSD is exact for any split): halve it when the
    # fp32 tiles of a 128-chunk would not fit in shared memory (H100: 227 KiB per block at p=64, n=128).
    r, q = h // g, _kernel_block(chunk_size, p, n)
    f32 = jnp.float32
    xp, bp, cp = (pad_to_chunks(v, q) for v in (x, B, C))
    dtp = pad_to_chunks(dt.astype(f32), q)
    lp = xp.shape[1]
    xt = xp.transpose(0, 2, 1, 3)  # [b, h, Lp, p]
    dt_t = dtp.transpose(0, 2, 1)  # [b, h, Lp]
    bt = bp.transpose(0, 2, 1, 3)  # [b, g, Lp, n]
    ct = cp.transpose(0, 2, 1, 3)
    s0 = jnp.zeros((b, h, n, p), f32) if initial_state is None else initial_state.astype(f32).transpose(0, 1, 3, 2)
    d = jnp.zeros((h,), f32) if D is None else D.astype(f32)

    full_h = pl.BlockSpec((h,), lambda i, j: (0,))
    in_specs = [
        full_h,
        full_h,
        pl.BlockSpec((None, None, lp, p), lambda i, j: (i, j, 0, 0)),
        pl.BlockSpec((None, None, lp), lambda i, j: (i, j, 0)),
        pl.BlockSpec((None, None, lp, n), lambda i, j: (i, j // r, 0, 0)),
        pl.BlockSpec((None, None, lp, n), lambda i, j: (i, j // r, 0, 0)),
        pl.BlockSpec((None, None, n, p), lambda i, j: (i, j, 0, 0)),
    ]
    inputs = [A.astype(f32), d, xt, dt_t, bt, ct, s0]
    if seq_idx is not None:  # laid out like dt: [b, h, Lp]
        rc = document_starts_per_chunk(seq_idx, q).transpose(1, 0, 2).reshape(b, 1, lp).astype(f32)
        inputs.append(jnp.broadcast_to(rc, (b, h, lp)))
        in_specs.append(pl.BlockSpec((None, None, lp), lambda i, j: (i, j, 0)))
    out_specs = [
        pl.BlockSpec((None, None, lp, p), lambda i, j: (i, j, 0, 0)),
        pl.BlockSpec((None, None, n, p), lambda i, j: (i, j, 0, 0)),
    ]
    y_t, sf = pl.pallas_call(
        functools.partial(_ssd_program, chunk_size=q, num_chunks=lp // q, documents=seq_idx is not None),
        out_shape=(jax.ShapeDtypeStruct((b, h, lp, p), x.dtype), jax.ShapeDtypeStruct((b, h, n, p), f32)),
        grid=(b, h),
        in_specs=in_specs,
        out_specs=out_specs,
        # [chunk, chunk] and [state, head_dim] fp32 tiles live in registers: more warps for bigger tiles.
        compiler_params=plgpu.CompilerParams(num_warps=8 if q * max(p, n) >= 4096 else 4, num_stages=2),
        interpret=interpret,
        name="ssd_chunk_scan_gpu",
    )(*inputs)
    return y_t.transpose(0, 2, 1, 3)[:, :seqlen], sf.transpose(0, 1, 3, 2)


_ssd_pallas_gpu = with_xla_backward(_forward)


def ssd_pallas_gpu(x, dt, A, B, C, D, initial_state, *, chunk_size: int, interpret: bool = False, seq_idx=None):
    """Chunked SSD on GPU via Pallas/Triton (or the generic interpreter when interpret=True); backward = XLA VJP.
    `seq_idx` [b, L] int (optional): packed documents, the state restarts at each document start."""
    return _ssd_pallas_gpu(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)

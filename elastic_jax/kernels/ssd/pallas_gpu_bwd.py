"""Backward Pallas GPU SSD kernels, one program per (batch, chunk, head), split as mamba_ssm's ssd_combined backward.

`chunk_state_grads` gives the cotangent of each chunk's entry state from that chunk's outputs (C^T (dy * e));
`pallas_gpu_passing.pass_states_back` carries it back over the chunks; `chunk_grads` then recomputes one chunk's
intermediates and returns dx, ddt, dB, dC and the chunk cumsum's cotangent (its reverse cumsum, in-document) from
dy, the entry state and the cotangent of the state leaving the chunk. dB and dC come per head; the caller sums the
heads of a group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from elastic_jax.kernels.ssd import pallas_gpu_layout as lay
from elastic_jax.kernels.ssd.pallas_gpu_fwd import call_per_chunk
from elastic_jax.kernels.ssd.pallas_gpu_tiles import F32, decays, dot, dot_nt, dot_tn, reverse_cumsum


def _state_grad_kernel(dy_ref, acum_ref, c_ref, *refs, q: int):
    rk_ref, dl_ref = refs if len(refs) == 2 else (None, *refs)
    d = decays(acum_ref[...], acum_ref[q - 1], None if rk_ref is None else rk_ref[...])
    dl_ref[...] = dot_tn(c_ref[...].astype(F32), dy_ref[...].astype(F32) * d.e[:, None])


def _chunk_grad_kernel(a_ref, d_ref, x_ref, dt_ref, acum_ref, b_ref, c_ref, s_ref, ds_ref, dtot_ref, dy_ref, *refs,
                       q: int):
    """VJP of one chunk's y = (C B^T * decay) (x dt) + (C S) e + D x and S' = et S + B^T (x dt w), given dy and
    dS' (`ds_ref`); `dtot_ref` holds the cotangent of the chunk's total dt * A through et S."""
    rk_ref, dx_ref, ddt_ref, dadt_ref, db_ref, dc_ref = refs if len(refs) == 6 else (None, *refs)
    head = pl.program_id(2)
    rk = None if rk_ref is None else rk_ref[...]
    acum = acum_ref[...]
    d = decays(acum, acum_ref[q - 1], rk)
    x, dt, dy = x_ref[...].astype(F32), dt_ref[...], dy_ref[...].astype(F32)
    bm, cm, s, ds = b_ref[...].astype(F32), c_ref[...].astype(F32), s_ref[...], ds_ref[...]
    xdt = x * dt[:, None]
    # The incoming-state term (C S) * e.
    dz = dy * d.e[:, None]
    dacum = jnp.sum(dz * dot(cm, s), axis=1)
    dc = dot_nt(dz, s)
    # The intra-chunk term (C B^T * decay) @ xdt.
    g = dot_nt(cm, bm) * d.decay
    dg = dot_nt(dy, xdt)
    dxdt = dot_tn(g, dy)
    dcb = dg * d.decay
    dseg = dg * g  # zero outside `visible`
    dacum = dacum + jnp.sum(dseg, axis=1) - jnp.sum(dseg, axis=0)
    dc = dc + dot(dcb, bm)
    db = dot_tn(dcb, cm)
    # The outgoing state B^T (xdt * w).
    du = dot(bm, ds)
    db = db + dot_nt(xdt * d.w[:, None], ds)
    dxdt = dxdt + du * d.w[:, None]
    dww = jnp.sum(du * xdt, axis=1) * d.w
    at_end = lax.broadcasted_iota(jnp.int32, (q,), 0) == q - 1
    dacum = dacum - dww + jnp.where(at_end, dtot_ref[...] + jnp.sum(dww), 0.0)
    da = reverse_cumsum(dacum, rk)  # acum = cumsum(dt * A)
    dx_ref[...] = (dxdt * dt[:, None] + d_ref[head] * dy).astype(dx_ref.dtype)
    ddt_ref[...] = jnp.sum(dxdt * x, axis=1) + da * a_ref[head]
    dadt_ref[...] = da * dt
    db_ref[...] = db
    dc_ref[...] = dc


def chunk_state_grads(ck: lay.Chunked, dy: jax.Array, q: int, interpret: bool) -> jax.Array:
    """[b, c, h, n, p]: cotangent of the state entering each chunk from that chunk's own y (dy [b, Lp, h, p])."""
    b, lp, h, p = ck.x.shape
    g, n = ck.C.shape[2], ck.C.shape[3]
    specs = [lay.rows(q, p), lay.steps(q), lay.group_rows(q, n, h // g)]
    out = jax.ShapeDtypeStruct((b, lp // q, h, n, p), F32)
    return call_per_chunk(_state_grad_kernel, ck, q, specs, [dy, ck.acum, ck.C], lay.state(n, p), out,
                          "ssd_chunk_state_bwd_gpu", interpret)


def chunk_grads(ck: lay.Chunked, A, D, entry, d_out, d_total, dy, q: int, interpret: bool):
    """(dx [b, Lp, h, p] in x.dtype, ddt [b, Lp, h], da * dt [b, Lp, h] (summed, dA), dB and dC per head
    [b, Lp, h, n], all f32 but dx)."""
    b, lp, h, p = ck.x.shape
    g, n = ck.B.shape[2], ck.B.shape[3]
    r = h // g
    specs = [lay.per_head(h), lay.per_head(h), lay.rows(q, p), lay.steps(q), lay.steps(q), lay.group_rows(q, n, r),
             lay.group_rows(q, n, r), lay.state(n, p), lay.state(n, p), lay.per_chunk(), lay.rows(q, p)]
    inputs = [A, D, ck.x, ck.dt, ck.acum, ck.B, ck.C, entry, d_out, d_total, dy]
    per_head_rows = jax.ShapeDtypeStruct((b, lp, h, n), F32)
    out_shape = (jax.ShapeDtypeStruct(ck.x.shape, ck.x.dtype), jax.ShapeDtypeStruct((b, lp, h), F32),
                 jax.ShapeDtypeStruct((b, lp, h), F32), per_head_rows, per_head_rows)
    out_specs = [lay.rows(q, p), lay.steps(q), lay.steps(q), lay.rows(q, n), lay.rows(q, n)]
    return call_per_chunk(_chunk_grad_kernel, ck, q, specs, inputs, out_specs, out_shape, "ssd_chunk_bwd_gpu",
                          interpret)

"""Forward Pallas GPU SSD kernels, one program per (batch, chunk, head): the chunk states and the chunk scan.

Between them `pallas_gpu_passing.pass_states` turns the chunk states into the state entering every chunk (mamba_ssm's
split: ssd_chunk_state, ssd_state_passing, ssd_chunk_scan).
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from elastic_jax.kernels.ssd import pallas_gpu_layout as lay
from elastic_jax.kernels.ssd.pallas_gpu_tiles import F32, decays, dot, dot_nt, dot_tn


def compiler_params(q: int, p: int, n: int) -> plgpu.CompilerParams:
    """More warps for bigger tiles (the [q, q] and [q, n] fp32 tiles live in registers)."""
    return plgpu.CompilerParams(num_warps=8 if q * max(p, n) >= 4096 else 4, num_stages=2)


def _state_kernel(x_ref, dt_ref, acum_ref, b_ref, *refs, q: int):
    """The chunk's own contribution to its outgoing state: B^T (x * dt * w), [n, p]."""
    rk_ref, st_ref = refs if len(refs) == 2 else (None, *refs)
    acum = acum_ref[...]
    d = decays(acum, acum_ref[q - 1], None if rk_ref is None else rk_ref[...])
    xw = x_ref[...].astype(F32) * (dt_ref[...] * d.w)[:, None]
    st_ref[...] = dot_tn(b_ref[...].astype(F32), xw)


def _scan_kernel(d_ref, x_ref, dt_ref, acum_ref, b_ref, c_ref, s_ref, *refs, q: int):
    """y = (C B^T * decay * dt) x + (C S) * e + D x for one chunk of one head."""
    rk_ref, y_ref = refs if len(refs) == 2 else (None, *refs)
    acum = acum_ref[...]
    d = decays(acum, acum_ref[q - 1], None if rk_ref is None else rk_ref[...])
    x = x_ref[...].astype(F32)
    cm = c_ref[...].astype(F32)
    g = dot_nt(cm, b_ref[...].astype(F32)) * d.decay * dt_ref[...][None, :]
    y = dot(g, x) + dot(cm, s_ref[...]) * d.e[:, None] + d_ref[pl.program_id(2)] * x
    y_ref[...] = y.astype(y_ref.dtype)


def call_per_chunk(kernel, ck: lay.Chunked, q: int, in_specs, inputs, out_spec, out_shape, name: str, interpret: bool):
    """Run `kernel` on the (batch, chunk, head) grid, the document-start counts appended when there are any."""
    b, lp, h, p = ck.x.shape
    if ck.rk is not None:
        in_specs, inputs = [*in_specs, lay.doc_steps(q)], [*inputs, ck.rk]
    return pl.pallas_call(
        functools.partial(kernel, q=q),
        out_shape=out_shape,
        grid=(b, lp // q, h),
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=compiler_params(q, p, ck.B.shape[3]),
        interpret=interpret,
        name=name,
    )(*inputs)


def chunk_states(ck: lay.Chunked, q: int, interpret: bool) -> jax.Array:
    """[b, c, h, n, p] f32: each chunk's own contribution to the state leaving it."""
    b, lp, h, p = ck.x.shape
    g, n = ck.B.shape[2], ck.B.shape[3]
    specs = [lay.rows(q, p), lay.steps(q), lay.steps(q), lay.group_rows(q, n, h // g)]
    out = jax.ShapeDtypeStruct((b, lp // q, h, n, p), F32)
    return call_per_chunk(_state_kernel, ck, q, specs, [ck.x, ck.dt, ck.acum, ck.B], lay.state(n, p), out,
                          "ssd_chunk_state_gpu", interpret)


def chunk_scan(ck: lay.Chunked, D: jax.Array, entry: jax.Array, q: int, interpret: bool) -> jax.Array:
    """y [b, Lp, h, p] in x.dtype from the inputs and `entry` [b, c, h, n, p], the state entering each chunk."""
    b, lp, h, p = ck.x.shape
    g, n = ck.B.shape[2], ck.B.shape[3]
    r = h // g
    specs = [lay.per_head(h), lay.rows(q, p), lay.steps(q), lay.steps(q), lay.group_rows(q, n, r),
             lay.group_rows(q, n, r), lay.state(n, p)]
    inputs = [D, ck.x, ck.dt, ck.acum, ck.B, ck.C, entry]
    out = jax.ShapeDtypeStruct(ck.x.shape, ck.x.dtype)
    return call_per_chunk(_scan_kernel, ck, q, specs, inputs, lay.rows(q, p), out, "ssd_chunk_scan_gpu", interpret)

"""Pallas GPU (Triton lowering) chunked SSD scan, chunk-parallel forward and backward, split as mamba_ssm's Triton SSD.

Forward: the chunk cumsum of dt * A (XLA, a few MiB), the chunk states (one program per (batch, chunk, head)),
state passing over chunks (the only sequential walk: an elementwise multiply-add per chunk on slices of the state),
and the chunk scan with the intra-chunk quadratic term and the incoming-state term (one program per (batch, chunk,
head)). Backward: the same split run backwards (pallas_gpu_bwd.py), from the chunk entry states the forward saved.
Triton needs power-of-two block sizes >= 16 for chunk, head_dim and state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from elastic_jax.kernels.ssd.pallas_gpu_bwd import chunk_grads, chunk_state_grads
from elastic_jax.kernels.ssd.pallas_gpu_fwd import chunk_scan, chunk_states
from elastic_jax.kernels.ssd.pallas_gpu_layout import chunk_inputs
from elastic_jax.kernels.ssd.pallas_gpu_passing import pass_states, pass_states_back
from elastic_jax.kernels.ssd.xla import pad_to_chunks

F32 = jnp.float32


def _pow2_at_least_16(v: int) -> bool:
    return v >= 16 and (v & (v - 1)) == 0


def supports(x_shape: tuple[int, ...], b_shape: tuple[int, ...], chunk_size: int, dtype: jnp.dtype) -> bool:
    """Whether the compiled Triton kernels handle these static shapes; otherwise "auto" falls back to XLA."""
    if jax.default_backend() != "gpu":
        return False
    p, n = x_shape[3], b_shape[3]
    dtype_ok = jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    # Register pressure: a program holds [chunk, chunk] and [chunk, state] tiles and (backward) two [state, head_dim]
    # states; Triton's tl.dot wants every block dimension a power of two >= 16.
    return dtype_ok and all(_pow2_at_least_16(v) for v in (chunk_size, p, n)) and chunk_size <= 128 and p * n <= 16384


def kernel_block(chunk_size: int, p: int, n: int) -> int:
    """Rows per kernel chunk: the model's chunk, halved until chunk * (chunk + p + 2n) fp32 values stay within 40960
    (a 128-row chunk at p=64, n=128 asked an H100 for 257 KiB of shared memory; it allows 227 KiB). Chunked SSD is
    exact for any split, so the model's chunk_size is unchanged."""
    q = chunk_size
    while q > 16 and q * (q + p + 2 * n) > 40960:
        q //= 2
    return q


def _forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size: int, interpret: bool):
    """(y [b, L, h, p], final state [b, h, p, n] f32, entry states [b, c, h, n, p] f32 for the backward)."""
    b, seqlen, h, p = x.shape
    n = B.shape[3]
    q = kernel_block(chunk_size, p, n)
    ck = chunk_inputs(x, dt, A, B, C, seq_idx, q)
    s0 = jnp.zeros((b, h, n, p), F32) if initial_state is None else initial_state.astype(F32).transpose(0, 1, 3, 2)
    d = jnp.zeros((h,), F32) if D is None else D.astype(F32)
    entry, final = pass_states(chunk_states(ck, q, interpret), ck.et, s0, interpret)
    y = chunk_scan(ck, d, entry, q, interpret)
    return y[:, :seqlen], final.transpose(0, 1, 3, 2), entry


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _ssd(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size: int, interpret: bool):
    return _forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)[:2]


def _ssd_fwd(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret):
    y, final, entry = _forward(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)
    return (y, final), (x, dt, A, B, C, D, initial_state, seq_idx, entry)


def _ssd_bwd(chunk_size, interpret, residuals, cotangents):
    """Cotangents of every input but seq_idx (integer document ids, None) from dy and the final state's."""
    x, dt, A, B, C, D, initial_state, seq_idx, entry = residuals
    dy, d_final = cotangents
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = kernel_block(chunk_size, p, n)
    ck = chunk_inputs(x, dt, A, B, C, seq_idx, q)
    lp = ck.x.shape[1]
    dyp = pad_to_chunks(dy, q)
    d_local = chunk_state_grads(ck, dyp, q, interpret)
    d_out, d_total, d_s0 = pass_states_back(d_local, entry, ck.et, d_final.astype(F32).transpose(0, 1, 3, 2),
                                            interpret)
    d = jnp.zeros((h,), F32) if D is None else D.astype(F32)
    dx, ddt, dadt, db, dc = chunk_grads(ck, A.astype(F32), d, entry, d_out, d_total, dyp, q, interpret)
    group_sum = lambda v, like: v.reshape(b, lp, g, h // g, n).sum(axis=3)[:, :seqlen].astype(like.dtype)  # noqa: E731
    # An elementwise product and sum, not an einsum: a dot could run at TF32 on a GPU.
    dD = None if D is None else jnp.sum(dy.astype(F32) * x.astype(F32), axis=(0, 1, 3)).astype(D.dtype)
    d_s0 = None if initial_state is None else d_s0.transpose(0, 1, 3, 2).astype(initial_state.dtype)
    return (dx[:, :seqlen], ddt[:, :seqlen].astype(dt.dtype), jnp.sum(dadt, axis=(0, 1)).astype(A.dtype),
            group_sum(db, B), group_sum(dc, C), dD, d_s0, None)


_ssd.defvjp(_ssd_fwd, _ssd_bwd)


def ssd_pallas_gpu(x, dt, A, B, C, D, initial_state, *, chunk_size: int, interpret: bool = False, seq_idx=None):
    """Chunked SSD on GPU via Pallas/Triton (or the generic interpreter when interpret=True), forward and backward.
    `seq_idx` [b, L] int (optional): packed documents, the state restarts at each document start."""
    return _ssd(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, interpret)

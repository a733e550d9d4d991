"""Chunked SSD (state-space duality) scan in plain jnp, with a hand-written chunked backward pass.

The sequence is cut into chunks of `chunk_size` steps. `lax.scan` walks the chunks carrying the [p, n] state of
every head; inside a chunk the output is an attention-like quadratic block (C B^T masked by the decay matrix) plus
the contribution of the incoming state. The backward pass is a reverse `lax.scan` over chunks that recomputes the
chunk-local quantities from the saved chunk-entry states, so fwd+bwd memory is linear in sequence length with a
small constant (one [b, h, p, n] state per chunk). All arithmetic is float32; y is cast back to x.dtype.

Packed documents (`seq_idx`, as mamba_ssm's chunked scan): no decay path crosses a document start. Inside a chunk
the decay matrix is masked where the two steps lie in different documents; the incoming state reaches only the
steps before the chunk's first document start, and only the last document's steps feed the outgoing state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST


def _ein(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=_HI, preferred_element_type=jnp.float32)


def pad_to_chunks(v: jax.Array, chunk_size: int) -> jax.Array:
    """Zero-pad axis 1 (time) up to a multiple of chunk_size; zero dt makes padded steps exact no-ops on the state."""
    pad = (-v.shape[1]) % chunk_size
    if pad == 0:
        return v
    widths = [(0, 0)] * v.ndim
    widths[1] = (0, pad)
    return jnp.pad(v, widths)


def _decay(acum: jax.Array) -> jax.Array:
    """exp(acum[l] - acum[s]) for s <= l else 0, masked to -inf *before* exp so nothing overflows ([..., l, s])."""
    q = acum.shape[-1]
    causal = jnp.tril(jnp.ones((q, q), dtype=bool))
    return jnp.exp(jnp.where(causal, acum[..., :, None] - acum[..., None, :], -jnp.inf))


def document_starts_per_chunk(seq_idx: jax.Array, chunk_size: int) -> jax.Array:
    """[c, b, l] int32: how many documents start in the chunk up to and including each step (padding starts none)."""
    starts = jnp.concatenate([jnp.zeros_like(seq_idx[:, :1], dtype=bool), seq_idx[:, 1:] != seq_idx[:, :-1]], axis=1)
    starts = pad_to_chunks(starts.astype(jnp.int32), chunk_size)
    b, lp = starts.shape
    return jnp.cumsum(starts.reshape(b, lp // chunk_size, chunk_size), axis=-1).transpose(1, 0, 2)


def _decays(acum: jax.Array, rk: jax.Array | None):
    """(decay [..,l,s], e [..,l] incoming-state decay, et [..] whole-chunk decay, w [..,l] decay to the chunk end).

    rk [b, l] (or None) counts the document starts in the chunk up to each step; a decay path is cut (set to zero)
    wherever it would cross one. The masks are constants, so the backward pass uses these same values.
    """
    total = acum[..., -1]
    if rk is None:
        return _decay(acum), jnp.exp(acum), jnp.exp(total), jnp.exp(total[..., None] - acum)
    q = acum.shape[-1]
    r = rk[:, None, None, :]  # [b, 1, 1, l] against acum [b, g, r, l]
    same = jnp.tril(jnp.ones((q, q), dtype=bool)) & (r[..., :, None] == r[..., None, :])
    decay = jnp.exp(jnp.where(same, acum[..., :, None] - acum[..., None, :], -jnp.inf))
    last = r[..., -1:]
    e = jnp.where(r == 0, jnp.exp(acum), 0.0)
    et = jnp.where(last[..., 0] == 0, jnp.exp(total), 0.0)
    w = jnp.where(r == last, jnp.exp(total[..., None] - acum), 0.0)
    return decay, e, et, w


def _sum_heads(v: jax.Array) -> jax.Array:
    """Sum over the heads-per-group axis 2 as unrolled adds (XLA:CPU reduces a major axis ~50x slower)."""
    out = v[:, :, 0]
    for i in range(1, v.shape[2]):
        out = out + v[:, :, i]
    return out


def _chunk_forward(state, xk, dk, bk, ck, rk, A, D):
    """One chunk. state [b,g,r,p,n], xk [b,g,r,l,p], dk [b,g,r,l], bk/ck [b,g,l,n], rk [b,l] or None, A/D [g,r]
    -> (new_state, y)."""
    acum = jnp.cumsum(dk * A[..., None], axis=-1)
    decay, e, et, w = _decays(acum, rk)  # w: decay from step l to the end of the chunk
    cb = _ein("bgln,bgsn->bgls", ck, bk)  # shared by the heads of a group
    xdt = xk * dk[..., None]
    y = _ein("bgrls,bgrsp->bgrlp", cb[:, :, None] * decay, xdt)
    y = y + _ein("bgln,bgrpn->bgrlp", ck, state) * e[..., None]
    y = y + D[..., None, None] * xk
    new_state = state * et[..., None, None] + _ein("bgrlp,bgln->bgrpn", xdt * w[..., None], bk)
    return new_state, y


def _reverse_cumsum(dacum: jax.Array, rk: jax.Array | None) -> jax.Array:
    """sum over u >= t of dacum[.., u]; with documents only over u in t's document, so that terms which cancel
    across a document start (exactly, but not in floating point) are never added: no gradient leaks there."""
    if rk is None:
        return lax.cumsum(dacum, axis=dacum.ndim - 1, reverse=True)
    q = dacum.shape[-1]
    r = rk[:, None, None, :]
    later_same = jnp.triu(jnp.ones((q, q), dtype=bool)) & (r[..., :, None] == r[..., None, :])  # [.., t, u]
    return jnp.sum(jnp.where(later_same, dacum[..., None, :], 0.0), axis=-1)


def _chunk_backward(state, xk, dk, bk, ck, rk, A, D, d_new, dy):
    """VJP of `_chunk_forward` (recomputing its intermediates): returns (d_state, dx, ddt, dB, dC, dA, dD)."""
    acum = jnp.cumsum(dk * A[..., None], axis=-1)
    decay, e, et, w = _decays(acum, rk)
    cb = _ein("bgln,bgsn->bgls", ck, bk)
    xdt = xk * dk[..., None]
    g_mat = cb[:, :, None] * decay

    d_D = jnp.sum(dy * xk, axis=(0, 3, 4))
    dx = D[..., None, None] * dy
    # y_off = (C S^T) * e
    y_off = _ein("bgln,bgrpn->bgrlp", ck, state) * e[..., None]
    dacum = jnp.sum(dy * y_off, axis=-1)
    dz = dy * e[..., None]
    dC = _ein("bgrlp,bgrpn->bgln", dz, state)
    d_state = _ein("bgrlp,bgln->bgrpn", dz, ck)
    # y_diag = (CB * decay) @ xdt
    dg = _ein("bgrlp,bgrsp->bgrls", dy, xdt)
    dxdt = _ein("bgrls,bgrlp->bgrsp", g_mat, dy)
    dcb = _sum_heads(dg * decay)
    dseg = dg * g_mat  # zero above the diagonal
    dacum = dacum + jnp.sum(dseg, axis=-1) - jnp.sum(dseg, axis=-2)
    dC = dC + _ein("bgls,bgsn->bgln", dcb, bk)
    dB = _ein("bgls,bgln->bgsn", dcb, ck)
    # new_state = et * state + (xdt * w)^T B
    d_state = d_state + d_new * et[..., None, None]
    dtotal = jnp.sum(state * d_new, axis=(-2, -1)) * et
    du = _ein("bgln,bgrpn->bgrlp", bk, d_new)
    dB = dB + _ein("bgrlp,bgrpn->bgln", xdt * w[..., None], d_new)
    dxdt = dxdt + du * w[..., None]
    dww = jnp.sum(du * xdt, axis=-1) * w
    dtotal = dtotal + jnp.sum(dww, axis=-1)
    dacum = (dacum - dww).at[..., -1].add(dtotal)
    # xdt = x * dt ; acum = cumsum(dt * A)
    dx = dx + dxdt * dk[..., None]
    da = _reverse_cumsum(dacum, rk)
    ddt = jnp.sum(dxdt * xk, axis=-1) + da * A[..., None]
    dA = jnp.sum(da * dk, axis=(0, 3))
    return d_state, dx, ddt, dB, dC, dA, d_D


@jax.custom_vjp
def _chunked_scan(xc, dtc, bc, cc, A, D, state0, rc):
    """Chunk-major inputs (xc [c,b,g,r,l,p], dtc [c,b,g,r,l], bc/cc [c,b,g,l,n], rc [c,b,l] int or None)
    -> (y like xc, final_state)."""

    def step(state, inp):
        return _chunk_forward(state, *inp, A, D)

    final_state, y = lax.scan(step, state0, (xc, dtc, bc, cc, rc))
    return y, final_state


def _chunked_scan_fwd(xc, dtc, bc, cc, A, D, state0, rc):
    """Forward under differentiation: also saves every chunk's entry state for the backward pass."""

    def step(state, inp):
        new_state, y = _chunk_forward(state, *inp, A, D)
        return new_state, (y, state)

    final_state, (y, entry_states) = lax.scan(step, state0, (xc, dtc, bc, cc, rc))
    return (y, final_state), (xc, dtc, bc, cc, rc, A, D, entry_states)


def _chunked_scan_bwd(res, cts):
    """Reverse scan over chunks, carrying the state cotangent; dA and dD are accumulated in the carry."""
    xc, dtc, bc, cc, rc, A, D, entry_states = res
    dy, d_final = cts

    def step(carry, inp):
        d_new, dA_acc, dD_acc = carry
        state, xk, dk, bk, ck, rk, dyk = inp
        d_state, dx, ddt, dB, dC, dA, d_D = _chunk_backward(state, xk, dk, bk, ck, rk, A, D, d_new, dyk)
        return (d_state, dA_acc + dA, dD_acc + d_D), (dx, ddt, dB, dC)

    init = (d_final, jnp.zeros_like(A), jnp.zeros_like(D))
    (d_state0, dA, dD), (dx, ddt, dB, dC) = lax.scan(step, init, (entry_states, xc, dtc, bc, cc, rc, dy),
                                                     reverse=True)
    return dx, ddt, dB, dC, dA, dD, d_state0, None


_chunked_scan.defvjp(_chunked_scan_fwd, _chunked_scan_bwd)


def ssd_xla(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None,
    initial_state: jax.Array | None,
    chunk_size: int,
    seq_idx: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Chunked SSD; returns (y [b,L,h,p] in x.dtype, final_state [b,h,p,n] fp32). Inputs are pre-validated.

    `seq_idx` [b, L] int (optional): a new document, with a zero state, starts wherever it changes.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    q = chunk_size
    f32 = jnp.float32

    xp, dtp, bp, cp = (pad_to_chunks(v.astype(f32), q) for v in (x, dt, B, C))
    c = xp.shape[1] // q
    # Chunk-major, head-major layouts so every contraction is a plain batched matmul.
    xc = xp.reshape(b, c, q, g, r, p).transpose(1, 0, 3, 4, 2, 5)  # [c,b,g,r,l,p]
    dtc = dtp.reshape(b, c, q, g, r).transpose(1, 0, 3, 4, 2)  # [c,b,g,r,l]
    bc = bp.reshape(b, c, q, g, n).transpose(1, 0, 3, 2, 4)  # [c,b,g,l,n]
    cc = cp.reshape(b, c, q, g, n).transpose(1, 0, 3, 2, 4)
    a_gr = A.astype(f32).reshape(g, r)
    d_gr = jnp.zeros((g, r), f32) if D is None else D.astype(f32).reshape(g, r)
    if initial_state is None:
        state0 = jnp.zeros((b, g, r, p, n), f32)
    else:
        state0 = initial_state.astype(f32).reshape(b, g, r, p, n)

    rc = None if seq_idx is None else document_starts_per_chunk(seq_idx, q)
    y, final_state = _chunked_scan(xc, dtc, bc, cc, a_gr, d_gr, state0, rc)
    y = y.transpose(1, 0, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :seqlen]
    return y.astype(x.dtype), final_state.reshape(b, h, p, n)

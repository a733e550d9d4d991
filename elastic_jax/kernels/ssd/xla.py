"""Chunked SSD (state-space duality) scan in plain jnp: quadratic attention-like block inside each chunk,
a linear `lax.scan` recurrence over chunk boundary states. Memory and time are linear in sequence length.

All arithmetic is float32 whatever the input dtype; the output is cast back to x.dtype. Gradients come from JAX
autodiff of this function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST


def pad_to_chunks(v: jax.Array, chunk_size: int) -> jax.Array:
    """Zero-pad axis 1 (time) up to a multiple of chunk_size; zero dt makes padded steps exact no-ops on the state."""
    pad = (-v.shape[1]) % chunk_size
    if pad == 0:
        return v
    widths = [(0, 0)] * v.ndim
    widths[1] = (0, pad)
    return jnp.pad(v, widths)


def _chunk_local(
    xc: jax.Array, dtc: jax.Array, a: jax.Array, bc: jax.Array, cc: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-chunk work, vectorised over chunks: (y_diag, chunk_state, chunk_decay, exp(acum)).

    Shapes: xc [b,c,g,r,l,p], dtc/a [b,c,g,r,l], bc/cc [b,c,g,l,n].
    """
    q = a.shape[-1]
    acum = jnp.cumsum(a, axis=-1)  # [b,c,g,r,l], non-increasing since a <= 0
    # Segment sums acum[l] - acum[s] for s <= l; masked to -inf above the diagonal *before* exp so that nothing
    # overflows and the masked entries get exactly zero gradient.
    seg = acum[..., :, None] - acum[..., None, :]
    causal = jnp.tril(jnp.ones((q, q), dtype=bool))
    decay = jnp.exp(jnp.where(causal, seg, -jnp.inf))  # [b,c,g,r,l,s]
    cb = jnp.einsum("bcgln,bcgsn->bcgls", cc, bc, precision=_HI)  # shared by all heads of a group
    m = cb[:, :, :, None] * decay * dtc[..., None, :]
    y_diag = jnp.einsum("bcgrls,bcgrsp->bcgrlp", m, xc, precision=_HI)

    total = acum[..., -1:]  # [b,c,g,r,1]
    w = jnp.exp(total - acum) * dtc  # weight of step l in the state at the end of its chunk
    chunk_state = jnp.einsum("bcgrlp,bcgln->bcgrpn", xc * w[..., None], bc, precision=_HI)
    return y_diag, chunk_state, jnp.exp(total[..., 0]), jnp.exp(acum)


def ssd_xla(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None,
    initial_state: jax.Array | None,
    chunk_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Chunked SSD forward; returns (y [b,L,h,p] in x.dtype, final_state [b,h,p,n] fp32). Inputs are pre-validated."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    q = chunk_size
    f32 = jnp.float32

    xp, dtp, bp, cp = (pad_to_chunks(v.astype(f32), q) for v in (x, dt, B, C))
    c = xp.shape[1] // q
    # Head-major layouts so every contraction is a plain batched matmul over (b, c, g[, r]).
    xc = xp.reshape(b, c, q, g, r, p).transpose(0, 1, 3, 4, 2, 5)  # [b,c,g,r,l,p]
    dtc = dtp.reshape(b, c, q, g, r).transpose(0, 1, 3, 4, 2)  # [b,c,g,r,l]
    bc = bp.reshape(b, c, q, g, n).transpose(0, 1, 3, 2, 4)  # [b,c,g,l,n]
    cc = cp.reshape(b, c, q, g, n).transpose(0, 1, 3, 2, 4)
    a = dtc * A.astype(f32).reshape(g, r)[:, :, None]

    y_diag, chunk_state, chunk_decay, decay_in = _chunk_local(xc, dtc, a, bc, cc)

    if initial_state is None:
        state0 = jnp.zeros((b, g, r, p, n), f32)
    else:
        state0 = initial_state.astype(f32).reshape(b, g, r, p, n)

    def carry_state(state, inputs):
        cs, dec = inputs
        return state * dec[..., None, None] + cs, state  # emit the state *entering* the chunk

    final_state, start_states = lax.scan(
        carry_state, state0, (jnp.moveaxis(chunk_state, 1, 0), jnp.moveaxis(chunk_decay, 1, 0))
    )
    start_states = jnp.moveaxis(start_states, 0, 1)  # [b,c,g,r,p,n]
    y_off = jnp.einsum("bcgln,bcgrpn->bcgrlp", cc, start_states, precision=_HI) * decay_in[..., None]
    y = y_diag + y_off
    if D is not None:
        y = y + D.astype(f32).reshape(g, r)[:, :, None, None] * xc
    y = y.transpose(0, 1, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :seqlen]
    return y.astype(x.dtype), final_state.reshape(b, h, p, n)

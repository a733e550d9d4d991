"""Step-by-step Mamba-2 selective-scan recurrence: the numerical oracle for every other implementation.

h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t (outer) B_t ;  y_t = C_t . h_t + D * x_t
With `seq_idx` (packed documents), h_{t-1} is taken as zero wherever seq_idx[t] != seq_idx[t-1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST


def _expand_groups(v: jax.Array, heads: int) -> jax.Array:
    """Repeat a [..., groups, state] array to [..., heads, state] (head h uses group h // (heads // groups))."""
    groups = v.shape[-2]
    return jnp.repeat(v, heads // groups, axis=-2)


def ssd_step_reference(
    state: jax.Array,
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One recurrence step. state [b,h,p,n] fp32, x [b,h,p], dt [b,h], A [h], B/C [b,g,n]; returns (y, new_state)."""
    heads = x.shape[1]
    f32 = jnp.float32
    xf, dtf = x.astype(f32), dt.astype(f32)
    b_h = _expand_groups(B.astype(f32), heads)  # [b, h, n]
    c_h = _expand_groups(C.astype(f32), heads)
    decay = jnp.exp(dtf * A.astype(f32))  # [b, h]
    new_state = state.astype(f32) * decay[..., None, None] + (dtf[..., None] * xf)[..., None] * b_h[:, :, None, :]
    y = jnp.einsum("bhpn,bhn->bhp", new_state, c_h, precision=_HI)
    if D is not None:
        y = y + D.astype(f32)[None, :, None] * xf
    return y.astype(x.dtype), new_state


def ssd_reference(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    initial_state: jax.Array | None = None,
    seq_idx: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Full-sequence scan over time with `lax.scan`; returns (y [b,L,h,p] in x.dtype, final_state [b,h,p,n] fp32).

    `seq_idx` [b, L] int (optional): the state restarts from zero at every t where seq_idx changes.
    """
    b, _, h, p = x.shape
    n = B.shape[-1]
    if initial_state is None:
        state0 = jnp.zeros((b, h, p, n), jnp.float32)
    else:
        state0 = initial_state.astype(jnp.float32)

    if seq_idx is None:
        keep = jnp.ones((b, x.shape[1]), jnp.float32)
    else:
        keep = jnp.concatenate([jnp.ones((b, 1), bool), seq_idx[:, 1:] == seq_idx[:, :-1]], axis=1)

    def step(state, inputs):
        xt, dtt, bt, ct, kt = inputs
        state = state * kt.astype(jnp.float32)[:, None, None, None]  # a document start forgets the past
        y, new_state = ssd_step_reference(state, xt, dtt, A, bt, ct, D)
        return new_state, y

    time_major = tuple(jnp.moveaxis(v, 1, 0) for v in (x, dt, B, C, keep))
    final_state, ys = lax.scan(step, state0, time_major)
    return jnp.moveaxis(ys, 0, 1), final_state

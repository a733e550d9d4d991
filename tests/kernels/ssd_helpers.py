"""Shared inputs and oracles of the SSD scan tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.kernels.ssd import ssd


def make_inputs(seed, b, seqlen, h, p, g, n, *, with_d=True, with_state=True, dtype=jnp.float32):
    """Random inputs with realistic magnitudes: dt = softplus(N(0,1) - 1) (~0.05-2), A in [-8, -0.5]."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    args = {
        "x": f(b, seqlen, h, p),
        "dt": np.log1p(np.exp(f(b, seqlen, h) - 1.0)),
        "A": -rng.uniform(0.5, 8.0, (h,)).astype(np.float32),
        "B": f(b, seqlen, g, n),
        "C": f(b, seqlen, g, n),
        "D": f(h) if with_d else None,
        "initial_state": f(b, h, p, n) if with_state else None,
    }
    return {k: None if v is None else jnp.asarray(v, dtype) for k, v in args.items()}


def rel_err(got, want) -> float:
    """max |got - want| / max |want|: robust to elements that are near zero."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6))


def numpy_recurrence(x, dt, A, B, C, D, initial_state):
    """Independent float64 NumPy loop over time (no compilation; used for many tiny property-test shapes)."""
    x, dt, A, B, C, D, state = (np.asarray(v, np.float64) for v in (x, dt, A, B, C, D, initial_state))
    rep = x.shape[2] // B.shape[2]
    bh, ch = np.repeat(B, rep, axis=2), np.repeat(C, rep, axis=2)
    ys = []
    for t in range(x.shape[1]):
        decay = np.exp(dt[:, t] * A)[..., None, None]
        state = state * decay + (dt[:, t, :, None] * x[:, t])[..., None] * bh[:, t, :, None, :]
        ys.append(np.einsum("bhpn,bhn->bhp", state, ch[:, t]) + D[:, None] * x[:, t])
    return np.stack(ys, axis=1), state


def upcast(args):
    """The same values in float32: the oracle for bf16 runs (shares compiled code with the float32 tests)."""
    return {k: None if v is None else v.astype(jnp.float32) for k, v in args.items()}


def run(args, impl, chunk_size):
    return ssd(**args, chunk_size=chunk_size, return_final_state=True, impl=impl)


def documents(seqlen: int, *rows_starts) -> jnp.ndarray:
    """seq_idx [len(rows_starts), seqlen]: each row's document ids, a new one at every listed start."""
    seq = np.zeros((len(rows_starts), seqlen), np.int32)
    for row, starts in enumerate(rows_starts):
        for t in starts:
            seq[row, t:] += 1
    return jnp.asarray(seq)


def outputs_and_grads(impl, args, chunk_size, seq_idx=None, seed=2):
    """(y, final_state, gradients wrt every non-None input) of a random projection of both outputs, jitted once."""
    b, seqlen, h, p = args["x"].shape
    rng = np.random.default_rng(seed)
    wy = jnp.asarray(rng.standard_normal((b, seqlen, h, p)), jnp.float32)
    ws = jnp.asarray(rng.standard_normal((b, h, p, args["B"].shape[-1])), jnp.float32)
    diff = {k: v for k, v in args.items() if v is not None}

    def loss(a):
        y, s = ssd(**a, chunk_size=chunk_size, return_final_state=True, impl=impl, seq_idx=seq_idx)
        return jnp.sum(y.astype(jnp.float32) * wy) + jnp.sum(s * ws), (y, s)

    (_, (y, s)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(diff)
    return y, s, grads

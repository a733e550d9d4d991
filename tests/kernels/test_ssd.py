"""Tests for the SSD scan family: values and gradients of every implementation vs the step-by-step reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_jax.kernels.ssd import IMPLS, ssd, ssd_decode_step
from elastic_jax.kernels.ssd.api import resolve_impl
from tests.kernels.ssd_helpers import make_inputs, numpy_recurrence, rel_err, run, upcast

jax.config.update("jax_enable_x64", False)

KERNEL_IMPLS = ("xla", "pallas_tpu_interpret", "pallas_gpu_interpret")
ON_GPU = jax.default_backend() == "gpu"
ON_TPU = jax.default_backend() == "tpu"




@functools.cache
def grad_fn(impl: str, chunk_size: int, has_d: bool, has_state: bool):
    """Jitted gradient of a random projection of (y, final_state) wrt every differentiable input (cached)."""
    names = ["x", "dt", "A", "B", "C"] + (["D"] if has_d else []) + (["initial_state"] if has_state else [])

    def loss(diff, wy, ws):
        y, s = ssd(**diff, chunk_size=chunk_size, return_final_state=True, impl=impl)
        return jnp.sum(y.astype(jnp.float32) * wy) + jnp.sum(s * ws)

    g = jax.jit(jax.grad(loss))
    return lambda args, wy, ws: g({k: args[k] for k in names}, wy, ws)


# (batch, seqlen, heads, head_dim, groups, state, chunk)
CASES = {
    "short": (1, 5, 2, 4, 1, 8, 16),  # seqlen < chunk
    "ragged_groups": (2, 38, 4, 8, 2, 16, 16),  # seqlen not a multiple of chunk, G > 1, batch > 1
    "exact": (2, 32, 4, 8, 4, 8, 8),  # seqlen a multiple of chunk, one head per group
}


# Every implementation: seqlen < chunk without D / initial_state, and the ragged grouped case with both.
FORWARD_CASES = [(impl, "short", False) for impl in KERNEL_IMPLS] + [
    (impl, "ragged_groups", True) for impl in KERNEL_IMPLS
]
FORWARD_CASES += [("xla", "short", True), ("xla", "exact", True)]


@pytest.mark.parametrize("impl,case,with_extras", FORWARD_CASES)
def test_forward_matches_reference(impl, case, with_extras):
    b, seqlen, h, p, g, n, q = CASES[case]
    args = make_inputs(0, b, seqlen, h, p, g, n, with_d=with_extras, with_state=with_extras)
    y_ref, s_ref = run(args, "reference", q)
    y, s = run(args, impl, q)
    assert y.shape == (b, seqlen, h, p) and y.dtype == jnp.float32
    assert s.shape == (b, h, p, n) and s.dtype == jnp.float32
    assert rel_err(y, y_ref) < 1e-4
    assert rel_err(s, s_ref) < 1e-4


GRAD_CASES = [("xla", "short", False)] + [(impl, "ragged_groups", True) for impl in KERNEL_IMPLS]


@pytest.mark.parametrize("impl,case,with_extras", GRAD_CASES)
def test_gradients_match_reference(impl, case, with_extras):
    b, seqlen, h, p, g, n, q = CASES[case]
    args = make_inputs(1, b, seqlen, h, p, g, n, with_d=with_extras, with_state=with_extras)
    rng = np.random.default_rng(2)
    wy = jnp.asarray(rng.standard_normal((b, seqlen, h, p)), jnp.float32)
    ws = jnp.asarray(rng.standard_normal((b, h, p, n)), jnp.float32)
    want = grad_fn("reference", q, with_extras, with_extras)(args, wy, ws)
    got = grad_fn(impl, q, with_extras, with_extras)(args, wy, ws)
    assert len(want) == (7 if with_extras else 5)
    for name in want:
        assert got[name].shape == want[name].shape
        assert rel_err(got[name], want[name]) < 1e-4, name


@pytest.mark.parametrize("impl", KERNEL_IMPLS)
def test_strong_decay_stays_finite(impl):
    """Large dt * |A| (in-chunk cumulative decay of thousands) must not overflow: the mask is applied before exp."""
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(14, b, seqlen, h, p, g, n)
    args["dt"] = args["dt"] * 20.0
    args["A"] = jnp.full_like(args["A"], -8.0)
    y_ref, s_ref = run(args, "reference", q)
    y, s = run(args, impl, q)
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(s)).all()
    assert rel_err(y, y_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4
    if impl == "xla":
        grads = grad_fn(impl, q, True, True)(args, jnp.ones_like(y), jnp.ones_like(s))
        assert all(np.isfinite(np.asarray(v)).all() for v in grads.values())


@pytest.mark.parametrize("impl", KERNEL_IMPLS)
def test_bf16_inputs(impl):
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(3, b, seqlen, h, p, g, n, dtype=jnp.bfloat16)
    args["initial_state"] = args["initial_state"].astype(jnp.float32)
    y_ref, s_ref = run(upcast(args), "reference", q)
    y, s = run(args, impl, q)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) < 2e-2
    assert rel_err(s, s_ref) < 2e-2


def test_bf16_gradients_xla():
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(4, b, seqlen, h, p, g, n, dtype=jnp.bfloat16)
    wy = jnp.ones((b, seqlen, h, p), jnp.float32)
    ws = jnp.ones((b, h, p, n), jnp.float32)
    want = grad_fn("reference", q, True, True)(upcast(args), wy, ws)
    got = grad_fn("xla", q, True, True)(args, wy, ws)
    for name in want:
        assert got[name].dtype == jnp.bfloat16
        assert rel_err(got[name], want[name]) < 2e-2, name


@pytest.mark.parametrize("impl", ["reference", *KERNEL_IMPLS])
def test_prefill_in_two_pieces(impl):
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(5, b, seqlen, h, p, g, n)
    y_full, s_full = run(args, impl, q)
    cut = seqlen // 2  # two equal, chunk-unaligned pieces: a single extra compilation
    first = {k: v[:, :cut] if k in ("x", "dt", "B", "C") else v for k, v in args.items()}
    y1, s1 = run(first, impl, q)
    second = {k: v[:, cut:] if k in ("x", "dt", "B", "C") else v for k, v in args.items()}
    second["initial_state"] = s1
    y2, s2 = run(second, impl, q)
    assert rel_err(jnp.concatenate([y1, y2], axis=1), y_full) < 1e-4
    assert rel_err(s2, s_full) < 1e-4


def test_decode_after_prefill_matches_full_scan():
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(6, b, seqlen, h, p, g, n)
    y_full, s_full = run(args, "reference", q)
    prompt = 30
    first = {k: v[:, :prompt] if k in ("x", "dt", "B", "C") else v for k, v in args.items()}
    _, state = run(first, "xla", q)
    ys = []
    for t in range(prompt, seqlen):
        y_t, state = ssd_decode_step(
            state, args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t], args["D"]
        )
        ys.append(y_t)
    assert rel_err(jnp.stack(ys, axis=1), y_full[:, prompt:]) < 1e-4
    assert rel_err(state, s_full) < 1e-4


def test_decode_step_formula_and_dtype():
    b, h, p, g, n = 2, 4, 8, 2, 16
    a = make_inputs(7, b, 1, h, p, g, n, dtype=jnp.bfloat16)
    state = a["initial_state"].astype(jnp.float32)
    x, dt, B, C = a["x"][:, 0], a["dt"][:, 0], a["B"][:, 0], a["C"][:, 0]
    y, new = ssd_decode_step(state, x, dt, a["A"], B, C, a["D"])
    f = lambda v: np.asarray(v, np.float32)
    bh, ch = np.repeat(f(B), h // g, axis=1), np.repeat(f(C), h // g, axis=1)
    want = f(state) * np.exp(f(dt) * f(a["A"]))[..., None, None] + (f(dt)[..., None] * f(x))[..., None] * bh[:, :, None]
    assert y.dtype == jnp.bfloat16 and new.dtype == jnp.float32
    assert rel_err(new, want) < 1e-5
    assert rel_err(y, np.einsum("bhpn,bhn->bhp", want, ch) + f(a["D"])[:, None] * f(x)) < 1e-2


def test_matches_transformers_nemotron_h():
    import torch
    import transformers.models.nemotron_h.modeling_nemotron_h as mod
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(8, b, seqlen, h, p, g, n)
    t = {k: torch.from_numpy(np.array(v)) for k, v in args.items()}
    y_t, s_t = mod.mamba2_chunk_scan(
        t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=q, D=t["D"], initial_states=t["initial_state"],
        dt_softplus=False, return_final_states=True,
    )  # fmt: skip
    y, s = run(args, "xla", q)
    assert rel_err(y, y_t.numpy()) < 1e-4 and rel_err(s, s_t.numpy()) < 1e-4
    state = t["initial_state"].clone()
    y_d = mod.mamba2_selective_state_update(
        state, t["x"][:, 0], t["dt"][:, 0, :, None].expand(-1, -1, p), t["A"][:, None, None].expand(-1, p, n),
        t["B"][:, 0], t["C"][:, 0], D=t["D"][:, None].expand(-1, p),
    )  # fmt: skip
    y_j, s_j = ssd_decode_step(
        args["initial_state"], args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0], args["C"][:, 0], args["D"]
    )
    assert rel_err(y_j, y_d.numpy()) < 1e-5 and rel_err(s_j, state.numpy()) < 1e-5


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 2),
    seqlen=st.integers(1, 20),
    g=st.sampled_from([1, 2]),
    r=st.sampled_from([1, 2]),
    p=st.sampled_from([2, 4]),
    n=st.sampled_from([2, 8]),
    q=st.sampled_from([1, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_property_xla_matches_reference(b, seqlen, g, r, p, n, q, seed):
    args = make_inputs(seed, b, seqlen, g * r, p, g, n)
    y_ref, s_ref = numpy_recurrence(**args)
    y, s = run(args, "xla", q)
    assert rel_err(y, y_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4


def _packed_seq_idx(b: int, seqlen: int) -> jnp.ndarray:
    """Rows of 2-3 documents with starts on and off chunk boundaries (chunk 8/16), and trailing padding (id 0)."""
    seq = np.zeros((b, seqlen), np.int32)
    seq[0, :10], seq[0, 10:16], seq[0, 16:] = 1, 2, 3  # a start at 16 = a chunk boundary, one mid-chunk
    if b > 1:
        seq[1, :17], seq[1, 17:30] = 1, 2  # then padding
    return jnp.asarray(seq)


def numpy_recurrence_with_resets(args, seq_idx):
    """The float64 loop, restarted from a zero state wherever seq_idx changes (what running each alone does)."""
    seq = np.asarray(seq_idx)
    ys, states = [], []
    for row in range(seq.shape[0]):
        cuts = [0] + [t for t in range(1, seq.shape[1]) if seq[row, t] != seq[row, t - 1]] + [seq.shape[1]]
        state = np.asarray(args["initial_state"][row:row + 1], np.float64)
        pieces = []
        for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
            piece = {name: args[name][row:row + 1, lo:hi] for name in ("x", "dt", "B", "C")}
            y, state = numpy_recurrence(**piece, A=args["A"], D=args["D"], initial_state=state if k == 0 else 0 * state)
            pieces.append(y)
        ys.append(np.concatenate(pieces, axis=1))
        states.append(state)
    return np.concatenate(ys), np.concatenate(states)


@pytest.mark.parametrize("impl", ["reference", *KERNEL_IMPLS])
def test_seq_idx_restarts_each_document(impl):
    """Packed documents: every document's outputs equal the scan of that document alone (from a zero state)."""
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(15, b, seqlen, h, p, g, n)
    seq_idx = _packed_seq_idx(b, seqlen)
    y_want, s_want = numpy_recurrence_with_resets(args, seq_idx)
    y, s = ssd(**args, chunk_size=q, return_final_state=True, impl=impl, seq_idx=seq_idx)
    assert rel_err(y, y_want) < 1e-4 and rel_err(s, s_want) < 1e-4


@pytest.mark.parametrize("impl,q", [("xla", 8), *((impl, 16) for impl in KERNEL_IMPLS)])
def test_seq_idx_gradients_match_reference(impl, q):
    b, seqlen, h, p, g, n, _ = CASES["ragged_groups"]
    args = make_inputs(16, b, seqlen, h, p, g, n)
    seq_idx = _packed_seq_idx(b, seqlen)
    rng = np.random.default_rng(17)
    wy = jnp.asarray(rng.standard_normal((b, seqlen, h, p)), jnp.float32)
    ws = jnp.asarray(rng.standard_normal((b, h, p, n)), jnp.float32)

    def loss(diff, impl):
        y, s = ssd(**diff, chunk_size=q, return_final_state=True, impl=impl, seq_idx=seq_idx)
        return jnp.sum(y * wy) + jnp.sum(s * ws)

    want = jax.grad(loss)(args, "reference")
    got = jax.jit(jax.grad(loss), static_argnums=1)(args, impl)
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-4, name


def test_seq_idx_gradient_of_one_document_stays_in_it():
    """A loss on one document has zero gradient on the other documents' inputs and on the initial state."""
    b, seqlen, h, p, g, n, q = CASES["ragged_groups"]
    args = make_inputs(18, b, seqlen, h, p, g, n)
    seq_idx = _packed_seq_idx(b, seqlen)
    grads = jax.grad(lambda a: jnp.sum(ssd(**a, chunk_size=q, impl="xla", seq_idx=seq_idx)[0, 10:16]))(args)
    for name in ("x", "dt", "B", "C"):
        outside = np.asarray(grads[name])[0, np.r_[0:10, 16:seqlen]]
        assert np.all(outside == 0), name
        assert np.any(np.asarray(grads[name])[0, 10:16] != 0), name
    assert np.all(np.asarray(grads["initial_state"]) == 0)


BAD = [
    ("x", lambda a: a["x"][0], "x"),
    ("dt", lambda a: a["dt"][..., :1], "dt"),
    ("A", lambda a: a["A"][None], "A"),
    ("B", lambda a: a["B"][:, :-1], "B"),
    ("C", lambda a: a["C"][..., :-1], "C"),
    ("D", lambda a: a["D"][:-1], "D"),
    ("initial_state", lambda a: a["initial_state"][..., :-1], "initial_state"),
    ("B", lambda a: jnp.concatenate([a["B"]] * 3, axis=2), "divisible by groups"),
    ("x", lambda a: a["x"].astype(jnp.int32), "floating-point"),
    ("seq_idx", lambda a: jnp.zeros((2, 11), jnp.int32), "seq_idx"),
    ("seq_idx", lambda a: jnp.zeros((2, 12), jnp.float32), "integer"),
]


@pytest.mark.parametrize("arg,mutate,msg", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_shapes_raise(arg, mutate, msg):
    args = make_inputs(9, 2, 12, 4, 8, 2, 16)
    args[arg] = mutate(args)
    with pytest.raises(ValueError, match=msg):
        ssd(**args, chunk_size=8)


def test_bad_static_args_raise():
    args = make_inputs(9, 1, 4, 2, 4, 1, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(**args, chunk_size=0)
    with pytest.raises(ValueError, match="impl"):
        ssd(**args, chunk_size=4, impl="cuda")
    with pytest.raises(ValueError, match="state"):
        ssd_decode_step(args["initial_state"][0], args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
                        args["C"][:, 0])  # fmt: skip
    with pytest.raises(ValueError, match="dt"):
        ssd_decode_step(args["initial_state"], args["x"][:, 0], args["dt"], args["A"], args["B"][:, 0], args["C"][:, 0])


def test_auto_resolution_and_return_type():
    args = make_inputs(10, 1, 9, 2, 4, 1, 4)
    expected = {"tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
    assert resolve_impl("auto", args["x"], args["B"], 128) == expected
    assert set(KERNEL_IMPLS) < set(IMPLS)
    y = ssd(**args, chunk_size=4)
    assert isinstance(y, jax.Array) and y.shape == args["x"].shape


def test_works_under_outer_jit_and_vmap():
    b, seqlen, h, p, g, n, q = CASES["short"]
    args = make_inputs(11, b, seqlen, h, p, g, n)
    f = jax.jit(lambda a: ssd(**a, chunk_size=q, impl="xla"))
    y_ref = run(args, "reference", q)[0]
    assert rel_err(f(args), y_ref) < 1e-4
    stacked = jax.tree.map(lambda v: jnp.stack([v, v]), args)
    assert rel_err(jax.vmap(f)(stacked)[1], y_ref) < 1e-4

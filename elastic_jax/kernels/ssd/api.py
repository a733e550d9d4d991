"""Public entry points of the Mamba-2 SSD scan: `ssd` (full sequence / prefill) and `ssd_decode_step` (one token).

Implementations (`impl=`):
  "reference"             lax.scan over time, one step per token (oracle; slow; JAX autodiff backward).
  "xla"                   chunked SSD in jnp with a hand-written chunked backward (custom_vjp); default on CPU.
  "pallas_tpu"            Mosaic-TPU Pallas forward kernel; backward = the "xla" backward (recomputes from inputs).
  "pallas_tpu_interpret"  the same kernel run by the TPU interpreter (any backend; for testing).
  "pallas_gpu"            Triton-lowered Pallas kernels, chunk-parallel, forward and backward.
  "pallas_gpu_interpret"  the same kernel run by the generic Pallas interpreter (any backend; for testing).
  "auto"                  first supported of: TPU -> pallas_tpu, xla; GPU -> xla; otherwise xla.

Packed documents: `ssd(..., seq_idx=...)` restarts the state at every document start, in every implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from elastic_jax.kernels.ssd import pallas_gpu, pallas_tpu
from elastic_jax.kernels.ssd.reference import ssd_reference, ssd_step_reference
from elastic_jax.kernels.ssd.xla import ssd_xla

IMPLS: tuple[str, ...] = (
    "auto",
    "reference",
    "xla",
    "pallas_tpu",
    "pallas_tpu_interpret",
    "pallas_gpu",
    "pallas_gpu_interpret",
)
# On an H100 the earlier Pallas GPU kernel (one program per (batch, head), chunks walked in order) ran the forward
# at 0.48M tokens/s against XLA's 6.4M (B=4, H=32, P=64, N=128, L=8192; docs/performance.md). The chunk-parallel
# rewrite has not been timed on a GPU yet (benchmarks/gpu_suite.sh does), so "auto" keeps xla on GPU and
# pallas_gpu stays an explicit choice until it is measured ahead.
# The chunked scan is exact for any chunk length, so the CPU path may use shorter chunks than the model's
# chunk_size: at 64 the [chunk, chunk] blocks fit the caches and fwd+bwd ran about 2x faster than at 128
# (B=4, H=16, P=N=64, L=256-512; docs/performance.md).
CPU_MAX_CHUNK = 64

_AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "tpu": ("pallas_tpu", "xla"),
    "gpu": ("xla",),
}


def _shape_err(name: str, expected: str, got: Sequence[int] | None, why: str = "") -> ValueError:
    got_s = "None" if got is None else str(tuple(got))
    return ValueError(f"ssd: `{name}` must have shape {expected}, got {got_s}{'; ' + why if why else ''}")


def _check_float(name: str, v: jax.Array) -> None:
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise ValueError(f"ssd: `{name}` must be a floating-point array, got dtype {v.dtype}")


def validate_ssd_args(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None,
    initial_state: jax.Array | None,
    chunk_size: int,
    seq_idx: jax.Array | None = None,
) -> None:
    """Check ranks, shapes and dtypes of `ssd` arguments; raises ValueError naming the offending argument."""
    if getattr(x, "ndim", None) != 4:
        raise _shape_err("x", "[batch, seqlen, heads, head_dim]", getattr(x, "shape", None))
    b, seqlen, h, p = x.shape
    if getattr(B, "ndim", None) != 4:
        raise _shape_err("B", "[batch, seqlen, groups, state]", getattr(B, "shape", None))
    g, n = B.shape[2], B.shape[3]
    if seqlen < 1:
        raise _shape_err("x", "[batch, seqlen >= 1, heads, head_dim]", x.shape)
    if g < 1 or h % g != 0:
        raise _shape_err("B", f"[{b}, {seqlen}, groups, state] with heads={h} divisible by groups", B.shape)
    if tuple(B.shape) != (b, seqlen, g, n):
        raise _shape_err("B", f"[{b}, {seqlen}, groups, state]", B.shape)
    if getattr(C, "shape", None) is None or tuple(C.shape) != (b, seqlen, g, n):
        raise _shape_err("C", f"[{b}, {seqlen}, {g}, {n}] (same as B)", getattr(C, "shape", None))
    if getattr(dt, "shape", None) is None or tuple(dt.shape) != (b, seqlen, h):
        raise _shape_err("dt", f"[{b}, {seqlen}, {h}] (batch, seqlen, heads)", getattr(dt, "shape", None))
    if getattr(A, "shape", None) is None or tuple(A.shape) != (h,):
        raise _shape_err("A", f"[{h}] (heads)", getattr(A, "shape", None))
    if D is not None and (getattr(D, "shape", None) is None or tuple(D.shape) != (h,)):
        raise _shape_err("D", f"[{h}] (heads) or None", getattr(D, "shape", None))
    if initial_state is not None and (
        getattr(initial_state, "shape", None) is None or tuple(initial_state.shape) != (b, h, p, n)
    ):
        raise _shape_err("initial_state", f"[{b}, {h}, {p}, {n}] or None", getattr(initial_state, "shape", None))
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state}
    for name, v in named.items():
        if v is not None:
            _check_float(name, v)
    if seq_idx is not None:
        if getattr(seq_idx, "shape", None) is None or tuple(seq_idx.shape) != (b, seqlen):
            raise _shape_err("seq_idx", f"[{b}, {seqlen}] (batch, seqlen) or None", getattr(seq_idx, "shape", None))
        if not jnp.issubdtype(seq_idx.dtype, jnp.integer):
            raise ValueError(f"ssd: `seq_idx` must be an integer array (document ids), got dtype {seq_idx.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd: `chunk_size` must be a positive Python int (static), got {chunk_size!r}")


def resolve_impl(impl: str, x: jax.Array, B: jax.Array, chunk_size: int, platform: str | None = None) -> str:
    """Map `impl` (possibly "auto") to a concrete implementation name for `platform` ('cpu', 'gpu' or 'tpu': what
    the program is compiled for; None: this process's default devices), checking kernel support statically."""
    if impl not in IMPLS:
        raise ValueError(f"ssd: unknown impl {impl!r}; expected one of {IMPLS}")
    if impl != "auto":
        return impl
    supports: dict[str, Callable[..., bool]] = {"pallas_tpu": pallas_tpu.supports, "pallas_gpu": pallas_gpu.supports}
    for cand in _AUTO_ORDER.get(platform or jax.default_backend(), ("xla",)):
        if cand not in supports or supports[cand](x.shape, B.shape, chunk_size, x.dtype):
            return cand
    return "xla"


@functools.partial(jax.jit, static_argnames=("chunk_size", "impl"))
def _ssd_impl(x, dt, A, B, C, D, initial_state, seq_idx, *, chunk_size: int, impl: str):
    if impl == "reference":
        return ssd_reference(x, dt, A, B, C, D, initial_state, seq_idx)
    if impl == "xla":
        return ssd_xla(x, dt, A, B, C, D, initial_state, chunk_size, seq_idx)
    if impl in ("pallas_tpu", "pallas_tpu_interpret"):
        return pallas_tpu.ssd_pallas_tpu(
            x, dt, A, B, C, D, initial_state, chunk_size=chunk_size, interpret=impl.endswith("interpret"),
            seq_idx=seq_idx,
        )
    if impl in ("pallas_gpu", "pallas_gpu_interpret"):
        return pallas_gpu.ssd_pallas_gpu(
            x, dt, A, B, C, D, initial_state, chunk_size=chunk_size, interpret=impl.endswith("interpret"),
            seq_idx=seq_idx,
        )
    raise ValueError(f"ssd: unknown impl {impl!r}")


def ssd(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    D: jax.Array | None = None,
    chunk_size: int,
    initial_state: jax.Array | None = None,
    return_final_state: bool = False,
    impl: str = "auto",
    seq_idx: jax.Array | None = None,
    platform: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Mamba-2 selective scan h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = C_t h_t + D x_t over a sequence.

    x [b,L,h,p]; dt [b,L,h] (already softplus'ed, positive); A [h] (negative); B, C [b,L,g,n]; D [h] or None;
    initial_state [b,h,p,n] or None. Returns y [b,L,h,p] in x.dtype, plus final_state [b,h,p,n] float32 when
    return_final_state. Any seqlen works (padded internally to a multiple of the static chunk_size).
    seq_idx [b,L] int or None: packed documents; the state restarts from zero wherever seq_idx changes (the
    initial state feeds only the first document; the final state is the last document's).
    `platform` ('cpu', 'gpu' or 'tpu'; None: this process's default devices): what the program is compiled for,
    which "auto" and the CPU's chunk length follow (a plan compiles for a TPU on a CPU host).
    """
    validate_ssd_args(x, dt, A, B, C, D, initial_state, chunk_size, seq_idx)
    platform = platform or jax.default_backend()
    name = resolve_impl(impl, x, B, chunk_size, platform)
    if name == "xla" and platform == "cpu":
        chunk_size = min(chunk_size, CPU_MAX_CHUNK)
    y, final_state = _ssd_impl(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size=chunk_size, impl=name)
    return (y, final_state) if return_final_state else y


def ssd_decode_step(
    state: jax.Array,
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One-token recurrence update for generation: returns (y [b,h,p] in x.dtype, new_state [b,h,p,n] float32).

    state [b,h,p,n]; x [b,h,p]; dt [b,h] (softplus'ed); A [h]; B, C [b,g,n]; D [h] or None.
    """
    if getattr(x, "ndim", None) != 3:
        got = getattr(x, "shape", None)
        raise ValueError(f"ssd_decode_step: `x` must have shape [batch, heads, head_dim], got {got}")
    b, h, p = x.shape
    if getattr(B, "ndim", None) != 3 or B.shape[0] != b or B.shape[1] < 1 or h % B.shape[1] != 0:
        raise ValueError(
            f"ssd_decode_step: `B` must have shape [{b}, groups, state] with heads={h} divisible by groups, "
            f"got {getattr(B, 'shape', None)}"
        )
    n = B.shape[2]
    expected = {"state": (b, h, p, n), "dt": (b, h), "A": (h,), "C": tuple(B.shape)}
    if D is not None:
        expected["D"] = (h,)
    given = {"state": state, "dt": dt, "A": A, "C": C, "D": D}
    for name, shape in expected.items():
        v = given[name]
        if getattr(v, "shape", None) is None or tuple(v.shape) != shape:
            raise ValueError(
                f"ssd_decode_step: `{name}` must have shape {list(shape)}, got {getattr(v, 'shape', None)}"
            )
    for name, v in {"state": state, "x": x, **given}.items():
        if v is not None and not jnp.issubdtype(v.dtype, jnp.floating):
            raise ValueError(f"ssd_decode_step: `{name}` must be a floating-point array, got dtype {v.dtype}")
    return _decode_jit(state, x, dt, A, B, C, D)


_decode_jit = jax.jit(ssd_step_reference)

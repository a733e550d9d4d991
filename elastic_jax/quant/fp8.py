"""FP8 (E4M3) weights and static activation scales, as NVIDIA's FP8 (W8A8) checkpoints store them.

The rule (NVIDIA Model-Optimizer's FP8 export, in float32):

- Weight scale `weight_scale = amax(|w|) / 448` (float32 division; 448 is E4M3's largest value), per tensor
  (shape ()) or, as an option, per output channel (the amax over the input axis only; the scale keeps the weight's
  shape with the input axis of size 1, so it broadcasts and slices along output axes like the weight). A zero amax
  gives a scale of 1.0 (Model-Optimizer clamps amax to float32's smallest normal there, a subnormal scale; any
  positive scale represents zeros exactly). The division is float32 as in Model-Optimizer, whose per-tensor scale
  has shape [1], so a bf16 weight is promoted to float32 before dividing.
- Weight codes `float8_e4m3fn(clip(w / weight_scale, -448, 448))`, round to nearest, ties to even (the clip only
  matters for a scale given from outside: a cast past 448 would give NaN).
- Decoding `float32(code) * weight_scale`, then cast to the requested dtype.
- Static input scale `input_scale = amax(|activation|) / 448` over calibration batches (per tensor, float32);
  at inference activations are quantised as `float8_e4m3fn(clip(x / input_scale, -448, 448))`.

Encoding runs in numpy (`encode`, E4M3 cast by ml_dtypes) or JAX (`encode_jax`); decoding likewise
(`decode`, `decode_jax` for on-the-fly dequantisation inside jit). Both give the same bits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from elastic_jax.quant.exact import div, rounded

E4M3_MAX = 448.0

Array = Any  # numpy or jax array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FP8Array:
    """An FP8 weight: `data` float8_e4m3fn (the weight's shape), `weight_scale` float32 (shape () per tensor, or the
    weight's shape with the input axis of size 1 per channel), `input_scale` float32 () or None until calibrated,
    `axis` the input axis (static)."""

    data: Array
    weight_scale: Array
    input_scale: Array | None
    axis: int = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.input_scale is None else np.asarray(self.input_scale).nbytes
        return int(self.data.nbytes + np.asarray(self.weight_scale).nbytes + extra)


def _e4m3_dtype(xp: Any) -> Any:
    return ml_dtypes.float8_e4m3fn if xp is np else jnp.float8_e4m3fn


def scale_from_amax(amax: Array, xp: Any = np) -> Array:
    """amax / 448 in float32; 1.0 where amax is 0."""
    amax = xp.asarray(amax, xp.float32)
    return xp.where(amax == 0, xp.float32(1.0), div(amax, E4M3_MAX, xp)).astype(xp.float32)


def weight_scale(w: Array, axis: int, per_channel: bool = False, xp: Any = np) -> Array:
    """The weight's FP8 scale: per tensor (shape ()) or per output channel (input axis kept with size 1)."""
    a = xp.abs(xp.asarray(w, xp.float32))
    return scale_from_amax(xp.max(a, axis=axis, keepdims=True) if per_channel else xp.max(a), xp)


def cast(x: Array, scale: Array, xp: Any = np) -> Array:
    """float8_e4m3fn(clip(x / scale, -448, 448)), the division in float32."""
    v = div(x, scale, xp)
    return rounded(xp.clip(v, -xp.float32(E4M3_MAX), xp.float32(E4M3_MAX)).astype(_e4m3_dtype(xp)), xp)


def _check(w: Array, axis: int, per_channel: bool, scale: Array | None, what: str) -> int:
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"{what}: FP8 quantises floating-point weights, got dtype {w.dtype}")
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"{what}: axis {axis} is out of range for a weight of shape {tuple(w.shape)}")
    axis %= w.ndim
    if scale is not None:
        want = () if not per_channel else tuple(1 if i == axis else n for i, n in enumerate(w.shape))
        if tuple(np.shape(scale)) != want:
            raise ValueError(f"{what}: weight_scale has shape {tuple(np.shape(scale))}; a "
                             f"{'per-channel' if per_channel else 'per-tensor'} scale has shape {want}")
    return axis


def _encode(w: Array, axis: int, per_channel: bool, scale: Array | None, xp: Any) -> FP8Array:
    s = weight_scale(w, axis, per_channel, xp) if scale is None else xp.asarray(scale, xp.float32)
    return FP8Array(cast(w, s, xp), s, None, axis)


def encode(w: Array, axis: int, per_channel: bool = False, scale: Array | None = None) -> FP8Array:
    """FP8 of weight `w` (input axis `axis`), on the host; `scale` a given weight scale (e.g. a parent's)."""
    axis = _check(w, axis, per_channel, scale, "fp8.encode")
    w = np.asarray(w, np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("fp8.encode: the weight has non-finite values (inf / NaN)")
    if scale is not None and not (np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0)):
        raise ValueError("fp8.encode: weight_scale must be finite and positive")
    return _encode(w, axis, per_channel, scale, np)


def encode_jax(w: Array, axis: int, per_channel: bool = False, scale: Array | None = None) -> FP8Array:
    """`encode` in JAX (traceable; same bits)."""
    return _encode(w, _check(w, axis, per_channel, scale, "fp8.encode_jax"), per_channel, scale, jnp)


def decode(q: FP8Array, dtype: Any = np.float32) -> np.ndarray:
    """The dequantised weight (numpy)."""
    return (np.asarray(q.data).astype(np.float32) * np.asarray(q.weight_scale, np.float32)).astype(dtype)


def decode_jax(q: FP8Array, dtype: Any = jnp.bfloat16) -> jax.Array:
    """The dequantised weight in JAX, for on-the-fly dequantisation inside jit."""
    return (q.data.astype(jnp.float32) * jnp.asarray(q.weight_scale, jnp.float32)).astype(dtype)


# ---- static activation scales ----------------------------------------------------------------------------
def observe_amax(amax: Array | None, x: Array) -> Array:
    """The running amax of calibration activations after one more batch `x` (float32, jittable)."""
    m = jnp.max(jnp.abs(jnp.asarray(x, jnp.float32)))
    return m if amax is None else jnp.maximum(jnp.asarray(amax, jnp.float32), m)


def calibrate_input_scale(batches: Any) -> np.float32:
    """The static per-tensor `input_scale` (amax / 448) of the activations in `batches` (an iterable of arrays)."""
    amax = None
    for x in batches:
        amax = observe_amax(amax, x)
    if amax is None:
        raise ValueError("fp8.calibrate_input_scale: no calibration batches")
    if not np.isfinite(float(amax)):
        raise ValueError("fp8.calibrate_input_scale: the calibration activations have non-finite values")
    return np.float32(scale_from_amax(np.float32(amax)))


def with_input_scale(q: FP8Array, input_scale: Array) -> FP8Array:
    """The same weight with its calibrated static input scale."""
    return dataclasses.replace(q, input_scale=np.float32(input_scale))


def quantize_input(x: Array, input_scale: Array) -> jax.Array:
    """Activations as E4M3 codes under a static input scale (JAX)."""
    return cast(x, input_scale, jnp)


def fake_quantize_input(x: Array, input_scale: Array, dtype: Any = None) -> jax.Array:
    """Activations rounded through E4M3 under a static input scale and scaled back (W8A8 simulated in JAX)."""
    y = quantize_input(x, input_scale).astype(jnp.float32) * jnp.asarray(input_scale, jnp.float32)
    return y.astype(x.dtype if dtype is None else dtype)


__all__ = ["E4M3_MAX", "FP8Array", "calibrate_input_scale", "cast", "decode", "decode_jax", "encode", "encode_jax",
           "fake_quantize_input", "observe_amax", "quantize_input", "scale_from_amax", "weight_scale",
           "with_input_scale"]

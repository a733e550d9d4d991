"""NVFP4 weights, computed exactly as NVIDIA Model-Optimizer's `NVFP4QTensor` (the format vLLM and TensorRT-LLM
load), so that a checkpoint quantised here is bit-identical to one Model-Optimizer would produce.

The rule, for a weight `x` quantised along its input axis (the axis a matmul contracts over), in float32:

1. Global scale `s2 = amax(|x|) / (6 * 448)` (float32 division; 6 is E2M1's largest value, 448 E4M3's).
   An all-zero tensor gets `s2 = 1.0` (Model-Optimizer's own code divides 0 by 0 there and stores NaN scales;
   any positive scale represents zeros exactly, and 1.0 is what it uses for zero blocks).
2. Per block of 16 consecutive values along the input axis: `block_amax / (6 * s2)` (`6 * s2` rounded to float32
   first); a block scale that is exactly 0 (an all-zero block) becomes 1.0; then clamped to [2^-9, 448] (E4M3's
   smallest subnormal and its largest value) and cast to E4M3 (float8_e4m3fn) rounding to nearest, ties to even.
3. Values: `x / (float32(block_scale_e4m3) * s2)` (the product of the ROUNDED block scale and s2 in float32, then
   one division), rounded to the nearest E2M1 value {0, 0.5, 1, 1.5, 2, 3, 4, 6} with ties to the even code and
   saturating at +-6. The sign bit is set when the scaled value is < 0: -0.0 encodes as +0 (code 0), a small
   negative value that rounds to zero as -0 (code 8).
4. Codes are 4 bits (sign, 2 exponent bits, 1 mantissa bit); two per byte along the input axis, the first (even
   index) in the low nibble.
5. Decoding: `e2m1_value * (float32(block_scale) * s2)` in float32, then cast to the requested dtype.

The reference is Model-Optimizer's `NVFP4QTensor.quantize` / `get_weights_scaling_factor` (release 0.47, which
clamps block scales to [2^-9, 448] before the E4M3 cast) with block size 16. Model-Optimizer quantises the last
axis of a torch [out, in] weight; here the input axis is named (`axis`), so the packed codes and block scales keep
the weight's layout with that axis divided by 2 and by 16: slicing output axes, or whole 16-blocks of the input
axis, slices them the same way.

Encoding runs in numpy (`encode`, exact on the host, E4M3 cast by ml_dtypes) or in JAX (`encode_jax`, jittable);
decoding likewise (`decode`, `decode_jax` for on-the-fly dequantisation inside jit). Both backends share one
implementation and give the same bits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from elastic_jax.quant.exact import div, rounded

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
MIN_BLOCK_SCALE = 2.0 ** -9  # E4M3's smallest subnormal
# E2M1 value of each 4-bit code (bit 3 the sign).
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
# Midpoints between neighbouring E2M1 magnitudes; a tie goes to the even code: down at the even-indexed
# midpoints (0.25 -> 0, 1.25 -> 1, 2.5 -> 2, 5 -> 4), up at the odd-indexed ones (0.75 -> 1, 1.75 -> 2, 3.5 -> 4).
_TIES_DOWN = (0.25, 1.25, 2.5, 5.0)
_TIES_UP = (0.75, 1.75, 3.5)

Array = Any  # numpy or jax array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NVFP4Array:
    """An NVFP4 weight: `packed` uint8 codes (the weight's shape, input axis halved), `scale` float8_e4m3fn block
    scales (input axis / 16), `scale_2` the float32 global scale (shape ()), `axis` the input axis (static)."""

    packed: Array
    scale: Array
    scale_2: Array
    axis: int = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the dequantised weight."""
        s = list(self.packed.shape)
        s[self.axis] *= 2
        return tuple(s)

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.scale.nbytes + np.asarray(self.scale_2).nbytes)


def _check(x: Array, axis: int, what: str) -> int:
    """The normalised input axis, after checking that `x` is a float array whose axis holds whole blocks."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{what}: NVFP4 quantises floating-point weights, got dtype {x.dtype}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{what}: axis {axis} is out of range for a weight of shape {tuple(x.shape)}")
    axis %= x.ndim
    if x.shape[axis] % BLOCK:
        raise ValueError(f"{what}: NVFP4 needs the input axis (axis {axis}, size {x.shape[axis]}) to be a multiple "
                         f"of {BLOCK}")
    return axis


def e2m1_codes(v: Array, xp: Any = np) -> Array:
    """4-bit E2M1 codes (uint8) of float32 `v`: nearest value, ties to even, saturating at +-6, sign if v < 0."""
    a = xp.abs(v)
    index = sum((a > t).astype(xp.uint8) for t in _TIES_DOWN) + sum((a >= t).astype(xp.uint8) for t in _TIES_UP)
    return (index + (v < 0).astype(xp.uint8) * 8).astype(xp.uint8)


def _e4m3(s: Array, xp: Any) -> Array:
    """float32 -> float8_e4m3fn, round to nearest even (values must already lie within +-448)."""
    return rounded(s.astype(ml_dtypes.float8_e4m3fn if xp is np else jnp.float8_e4m3fn), xp)


def scale_from_amax(amax: Array, xp: Any = np) -> Array:
    """s2 = amax / (6 * 448) in float32, elementwise; 1.0 where amax is 0."""
    amax = xp.asarray(amax, xp.float32)
    return xp.where(amax == 0, xp.float32(1.0), div(amax, E2M1_MAX * E4M3_MAX, xp)).astype(xp.float32)


def global_scale(x: Array, xp: Any = np) -> Array:
    """s2 = amax(|x|) / (6 * 448) in float32; 1.0 for an all-zero tensor."""
    return scale_from_amax(xp.max(xp.abs(xp.asarray(x, xp.float32))), xp)


def _blocks(x: Array, axis: int, xp: Any) -> Array:
    """float32 x with the input axis moved last and split into [..., n_blocks, 16]."""
    x = xp.moveaxis(xp.asarray(x, xp.float32), axis, -1)
    return x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK, BLOCK))


def encode_blocks(blocks: Array, s2: Array, xp: Any = np) -> tuple[Array, Array]:
    """(E2M1 codes [..., n, 16], E4M3 block scales [..., n]) of float32 `blocks` [..., n, 16] under global scale(s)
    `s2` (a scalar, or one per block [..., n]): rules 2 and 3 of the module docstring."""
    block_amax = xp.max(xp.abs(blocks), axis=-1)
    raw = div(block_amax, xp.float32(E2M1_MAX) * s2, xp)
    raw = xp.where((raw == 0) | (block_amax == 0), xp.float32(1.0), raw)  # zero blocks (0/0 when s2 is 0)
    scale = _e4m3(xp.clip(raw, xp.float32(MIN_BLOCK_SCALE), xp.float32(E4M3_MAX)), xp)
    scaled = div(blocks, (scale.astype(xp.float32) * s2)[..., None], xp)
    return e2m1_codes(scaled, xp), scale


def decode_blocks(codes: Array, scale: Array, s2: Array, xp: Any = np) -> Array:
    """float32 values [..., n, 16] of E2M1 `codes` under E4M3 block scales [..., n] and global scale(s) `s2`."""
    return xp.asarray(E2M1_VALUES)[codes.astype(xp.int32)] * (scale.astype(xp.float32) * s2)[..., None]


def _encode(x: Array, axis: int, scale_2: Array | None, xp: Any) -> NVFP4Array:
    blocks = _blocks(x, axis, xp)
    s2 = global_scale(x, xp) if scale_2 is None else xp.asarray(scale_2, xp.float32).reshape(())
    codes, scale = encode_blocks(blocks, s2, xp)
    codes = codes.reshape(codes.shape[:-2] + (-1,))
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return NVFP4Array(xp.moveaxis(packed, -1, axis), xp.moveaxis(scale, -1, axis), s2, axis)


def encode(x: Array, axis: int, scale_2: Array | None = None) -> NVFP4Array:
    """NVFP4 of `x` along input axis `axis`, on the host (numpy); `scale_2` a given global scale (e.g. a parent
    tensor's) instead of this tensor's own."""
    axis = _check(x, axis, "nvfp4.encode")
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("nvfp4.encode: the weight has non-finite values (inf / NaN)")
    if scale_2 is not None and not (np.isfinite(scale_2) and float(scale_2) > 0):
        raise ValueError(f"nvfp4.encode: scale_2 must be a finite positive float32, got {scale_2}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _encode(x, axis, scale_2, np)


def encode_jax(x: Array, axis: int, scale_2: Array | None = None) -> NVFP4Array:
    """`encode` in JAX (traceable; same bits). Inputs are not checked for finiteness."""
    return _encode(x, _check(x, axis, "nvfp4.encode_jax"), scale_2, jnp)


def _decode(q: NVFP4Array, dtype: Any, xp: Any) -> Array:
    packed = xp.moveaxis(q.packed, q.axis, -1)
    codes = xp.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1, BLOCK))
    values = decode_blocks(codes, xp.moveaxis(q.scale, q.axis, -1), xp.asarray(q.scale_2, xp.float32), xp)
    return xp.moveaxis(values.reshape(packed.shape[:-1] + (-1,)), -1, q.axis).astype(dtype)


def decode(q: NVFP4Array, dtype: Any = np.float32) -> np.ndarray:
    """The dequantised weight (numpy)."""
    return _decode(NVFP4Array(np.asarray(q.packed), np.asarray(q.scale), np.asarray(q.scale_2), q.axis), dtype, np)


def decode_jax(q: NVFP4Array, dtype: Any = jnp.bfloat16) -> jax.Array:
    """The dequantised weight in JAX, for on-the-fly dequantisation inside jit."""
    return _decode(q, dtype, jnp)


def unpack_codes(q: NVFP4Array) -> np.ndarray:
    """One uint8 code per weight element (the weight's shape), numpy."""
    packed = np.moveaxis(np.asarray(q.packed), q.axis, -1)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return np.moveaxis(codes, -1, q.axis)


def pack_codes(codes: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of `unpack_codes`: two codes per byte along `axis`, the first in the low nibble."""
    c = np.moveaxis(np.asarray(codes, np.uint8), axis, -1)
    return np.moveaxis(c[..., 0::2] | (c[..., 1::2] << 4), -1, axis)


__all__ = ["BLOCK", "E2M1_MAX", "E2M1_VALUES", "E4M3_MAX", "MIN_BLOCK_SCALE", "NVFP4Array", "decode", "decode_blocks",
           "decode_jax", "e2m1_codes", "encode", "encode_blocks", "encode_jax", "global_scale", "pack_codes",
           "scale_from_amax", "unpack_codes"]

"""An independent, plain-Python reference of the NVFP4 and FP8 rules (elastic_jax/quant docstrings).

Value tables are built from the bit layouts (no ml_dtypes), rounding is an exhaustive nearest search with ties to
the even code, and the scale arithmetic uses numpy float32 scalars (IEEE single precision, one rounding per op).
Slow by design: use on small tensors.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def e2m1_magnitudes() -> list[tuple[int, float]]:
    """(code, value) of the 8 non-negative E2M1 codes: 1 sign, 2 exponent (bias 1), 1 mantissa bit."""
    out = []
    for c in range(8):
        e, m = c >> 1, c & 1
        out.append((c, m * 0.5 if e == 0 else (1 + m / 2) * 2.0 ** (e - 1)))
    return out


def e4m3_magnitudes() -> list[tuple[int, float]]:
    """(code, value) of the finite non-negative E4M3FN codes: 4 exponent bits (bias 7), 3 mantissa, 0x7F is NaN."""
    out = []
    for c in range(0x7F):
        e, m = c >> 3, c & 7
        out.append((c, m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)))
    return out


E2M1 = e2m1_magnitudes()
E4M3 = e4m3_magnitudes()
E2M1_VALUE = {c: v for c, v in E2M1} | {c | 8: -v for c, v in E2M1}


def nearest_even(a: float, table: list[tuple[int, float]]) -> int:
    """The code nearest to magnitude `a` (>= 0); of two equally near codes the even one. Saturates at the top."""
    best = None
    for code, value in table:
        d = abs(float(a) - value)
        if best is None or d < best[0] or (d == best[0] and code % 2 == 0):
            best = (d, code)
    return best[1]


def e4m3_code(v: float) -> int:
    """Signed E4M3 code of a float32 already within +-448 (IEEE sign: -0.0 keeps its sign bit)."""
    return nearest_even(abs(v), E4M3) | (0x80 if math.copysign(1.0, v) < 0 else 0)


def e4m3_value(code: int) -> F32:
    mag = dict(E4M3)[code & 0x7F]
    return F32(-mag if code & 0x80 else mag)


def e2m1_code(v: F32) -> int:
    """E2M1 code as Model-Optimizer sets it: nearest even magnitude, sign bit when v < 0."""
    return nearest_even(abs(v), E2M1) | (8 if v < 0 else 0)


def nvfp4_reference(x: np.ndarray, scale_2: float | None = None):
    """(packed uint8 [in/2, out], block-scale codes uint8 [in/16, out], s2) of a 2-D float32 [in, out] weight
    quantised along axis 0."""
    x = np.asarray(x, np.float32)
    n_in, n_out = x.shape
    if scale_2 is None:
        amax = max(abs(float(v)) for v in x.ravel())
        s2 = F32(amax) / F32(6.0 * 448.0) if amax > 0 else F32(1.0)
    else:
        s2 = F32(scale_2)
    scales = np.zeros((n_in // 16, n_out), np.uint8)
    codes = np.zeros((n_in, n_out), np.uint8)
    with np.errstate(over="ignore", under="ignore"):
        for j in range(n_out):
            for b in range(n_in // 16):
                block = [x[16 * b + i, j] for i in range(16)]
                bamax = F32(max(abs(float(v)) for v in block))
                raw = bamax / (F32(6.0) * s2)
                if raw == 0 or bamax == 0:
                    raw = F32(1.0)
                raw = min(max(raw, F32(2.0 ** -9)), F32(448.0))
                scales[b, j] = nearest_even(raw, E4M3)
                denom = e4m3_value(int(scales[b, j])) * s2
                for i, v in enumerate(block):
                    codes[16 * b + i, j] = e2m1_code(F32(v) / denom)
    packed = codes[0::2] | (codes[1::2] << 4)
    return packed, scales, s2


def fp8_reference(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """E4M3 codes (uint8) of float32 `w` under `scale` (broadcast): clip(w / scale, +-448), nearest even."""
    w = np.asarray(w, np.float32)
    s = np.broadcast_to(np.asarray(scale, np.float32), w.shape)
    out = np.zeros(w.shape, np.uint8)
    with np.errstate(over="ignore"):
        for idx in np.ndindex(w.shape):
            v = F32(w[idx]) / F32(s[idx])
            v = min(max(v, F32(-448.0)), F32(448.0))
            out[idx] = e4m3_code(v)
    return out


def fp8_scale_reference(amax: float) -> F32:
    return F32(amax) / F32(448.0) if amax > 0 else F32(1.0)

"""FP8 (E4M3) weights and static input scales: bit-exact against an independent reference, numpy == JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from elastic_jax.quant import fp8
from tests.quant.reference import e4m3_value, fp8_reference, fp8_scale_reference


def _bits(a) -> np.ndarray:
    return np.asarray(a).view(np.uint8)


def special_values() -> np.ndarray:
    """Values meant for a scale of 1.0: E4M3 ties, subnormals, zeros of both signs, saturation."""
    s = 2.0 ** -9  # smallest subnormal
    return np.array([
        0.0, -0.0, 448.0, -448.0, 464.0, 500.0, -1e6,      # at and past saturation (clipped to 448)
        1.0625, 1.1875, 17.0, 19.0, -1.0625,               # ties between normals -> even mantissa
        0.5 * s, -0.5 * s, 1.5 * s, 2.5 * s, 0.3 * s,      # ties and rounding among subnormals; to (-)0
        1e-30, -1e-30, 2.0 ** -6, 7 * 2.0 ** -9, 3.14159,
    ], np.float32)


def random_weight(rng, shape=(48, 10)) -> np.ndarray:
    """Columns (last axis) over many magnitudes, one all-zero column, zeros of both signs, a value far below the
    weight's scale (rounds to zero)."""
    w = rng.normal(size=shape).astype(np.float32)
    w *= (10.0 ** rng.uniform(-6, 2, size=shape[-1:])).astype(np.float32)
    w[rng.random(shape) < 0.05] = 0.0
    w[rng.random(shape) < 0.05] = -0.0
    w[..., 1] = 0.0
    w.reshape(-1, shape[-1])[3, 2] = 1e-38
    return w


def test_special_values_match_reference():
    v = special_values()[:, None]
    q = fp8.encode(v, 0, scale=np.float32(1.0))
    codes = _bits(q.data)
    np.testing.assert_array_equal(codes, fp8_reference(v, 1.0))
    assert list(codes[:7, 0]) == [0x00, 0x80, 0x7E, 0xFE, 0x7E, 0x7E, 0xFE]
    assert [float(e4m3_value(int(c))) for c in codes[7:11, 0]] == [1.0, 1.25, 16.0, 20.0]


def test_random_weights_match_reference_per_tensor_and_per_channel():
    rng = np.random.default_rng(0)
    w = random_weight(rng)
    q = fp8.encode(w, 0)
    assert q.weight_scale.dtype == np.float32 and q.weight_scale.shape == ()
    assert q.weight_scale == fp8_scale_reference(float(np.abs(w).max()))
    np.testing.assert_array_equal(_bits(q.data), fp8_reference(w, q.weight_scale))
    qc = fp8.encode(w, 0, per_channel=True)
    want = np.array([[fp8_scale_reference(float(np.abs(w[:, j]).max())) for j in range(w.shape[1])]], np.float32)
    np.testing.assert_array_equal(qc.weight_scale, want)  # the zero column gets 1.0
    assert qc.weight_scale[0, 1] == 1.0
    np.testing.assert_array_equal(_bits(qc.data), fp8_reference(w, want))


def test_given_scale_saturates_and_jax_gives_the_same_bits():
    rng = np.random.default_rng(1)
    w = random_weight(rng, (16, 3, 8))
    small = np.float32(fp8.weight_scale(w, 1) / 4)  # values past 448: clipped, not NaN
    enc = jax.jit(fp8.encode_jax, static_argnums=(1, 2))
    for per_channel, scale in [(False, None), (True, None), (False, small)]:
        q, qj = fp8.encode(w, 1, per_channel, scale), enc(jnp.asarray(w), 1, per_channel, scale)
        np.testing.assert_array_equal(_bits(qj.data), _bits(q.data))
        np.testing.assert_array_equal(np.asarray(qj.weight_scale), q.weight_scale)
        np.testing.assert_array_equal(_bits(q.data), fp8_reference(w, q.weight_scale))
        np.testing.assert_array_equal(np.asarray(jax.jit(fp8.decode_jax, static_argnums=1)(qj, jnp.float32)),
                                      fp8.decode(q))
    assert not np.isnan(fp8.decode(fp8.encode(w, 1, scale=small))).any()


def test_decoding_round_trips_through_ml_dtypes():
    rng = np.random.default_rng(2)
    w = random_weight(rng)
    q = fp8.encode(w, 0, per_channel=True)
    np.testing.assert_array_equal(fp8.decode(q), q.data.astype(np.float32) * q.weight_scale)
    np.testing.assert_array_equal(fp8.encode(fp8.decode(q), 0, True, q.weight_scale).data.view(np.uint8),
                                  _bits(q.data))
    assert fp8.decode(q, ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16
    assert q.nbytes == w.size + 4 * w.shape[1]


def test_zero_weight_gets_unit_scale():
    q = fp8.encode(np.zeros((4, 2), np.float32), 0)
    assert q.weight_scale == 1.0 and not fp8.decode(q).any()


def test_static_input_scale_from_calibration_batches():
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(2, 5, 8)).astype(np.float32) * s for s in (0.5, 3.0, 1.0)]
    s = fp8.calibrate_input_scale(batches)
    amax = max(float(np.abs(b).max()) for b in batches)
    assert s.dtype == np.float32 and s == fp8_scale_reference(amax)
    x = batches[1] * 2  # beyond the calibrated range: clipped to +-448
    codes = np.asarray(jax.jit(fp8.quantize_input)(jnp.asarray(x), s))
    np.testing.assert_array_equal(_bits(codes), fp8_reference(x, s))
    y = fp8.fake_quantize_input(jnp.asarray(x), s)
    np.testing.assert_array_equal(np.asarray(y), codes.astype(np.float32) * s)
    q = fp8.with_input_scale(fp8.encode(batches[0][0], 1), s)
    assert q.input_scale == s and q.nbytes == 5 * 8 + 8
    with pytest.raises(ValueError, match="no calibration batches"):
        fp8.calibrate_input_scale([])


@pytest.mark.parametrize("kwargs, match", [
    (dict(w=np.zeros((4, 2), np.int8), axis=0), "floating-point"),
    (dict(w=np.zeros((4, 2), np.float32), axis=-3), "out of range"),
    (dict(w=np.full((4, 2), np.nan, np.float32), axis=0), "non-finite"),
    (dict(w=np.ones((4, 2), np.float32), axis=0, scale=np.float32(-1.0)), "finite and positive"),
    (dict(w=np.ones((4, 2), np.float32), axis=0, per_channel=True, scale=np.ones((2,), np.float32)), r"\(1, 2\)"),
])
def test_user_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fp8.encode(**kwargs)


def test_fake_quantisation_in_one_program_keeps_the_e4m3_rounding():
    """Encode and decode inside one jit (as quantisation-aware training does) round through E4M3 exactly as the
    host does: the compiler may not fold the float32 -> float8 -> float32 round trip away."""
    w = random_weight(np.random.default_rng(4))
    fake = jax.jit(lambda x: fp8.decode_jax(fp8.encode_jax(x, 0), jnp.float32))(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(fake), fp8.decode(fp8.encode(w, 0)))
    x = jnp.asarray(w)
    s = np.float32(0.01)
    np.testing.assert_array_equal(np.asarray(jax.jit(fp8.fake_quantize_input)(x, s)),
                                  fp8_reference(w, s).view(ml_dtypes.float8_e4m3fn).astype(np.float32) * s)

"""NVFP4: bit-exact against an independent reference of the rule, numpy == JAX, decoding through ml_dtypes, size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from elastic_jax.quant import nvfp4
from tests.quant.reference import E2M1_VALUE, E4M3, nvfp4_reference


def _bits(a) -> np.ndarray:
    return np.asarray(a).view(np.uint8)


def special_block_tensor() -> np.ndarray:
    """[16 * 9, 2] columns of hand-made blocks, meant for scale_2 = 1.0 (so a block scale is block_amax / 6)."""
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, -0.0, 0.0, 6.0, 5.99, -0.1]
    blocks = [
        ties,                                                 # amax 6 -> scale 1.0: every E2M1 tie, both signs
        [6 * 448.0 * 2] + [6 * 448.0 * 1.1, -7000.0] + [1.0] * 13,  # scale past 448 -> clipped; values saturate
        [0.3 * 6 * 2.0 ** -9, -1e-30] + [0.0] * 14,           # needs a scale below 2^-9: clamped up
        [6 * 2.0 ** -10] + [-0.0] * 15,                       # scale exactly 2^-10 (an E4M3 tie to 0): clamped
        [0.0] * 16,                                           # all-zero block -> 1.0
        [-0.0] * 16,                                          # all negative zeros
        [6 * 3.3 * 2.0 ** -9] + list(np.linspace(-0.01, 0.01, 15)),  # subnormal block scale
        [6 * 1.0625, 6 * 1.0625 / 2, 1.0] + [0.5] * 13,       # scale 1.0625: an E4M3 tie, rounds to even 1.0
        [6 * 1.1875, -6 * 1.1875] + [3.0] * 14,               # scale 1.1875: tie, rounds to even 1.25
    ]
    col0 = np.array([v for b in blocks for v in b], np.float32)
    return np.stack([col0, -col0[::-1]], axis=1)


def random_tensor(rng, n_in=64, n_out=12) -> np.ndarray:
    """Normal values, columns spread over many magnitudes (some need the smallest block scales), zero blocks,
    negative zeros and exact zeros."""
    x = rng.normal(size=(n_in, n_out)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-7, 2, size=(1, n_out))).astype(np.float32)
    x[:, 0] *= 1e-6
    x[16:32, 1] = 0.0
    x[32:48, 2] = -0.0
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.05] = -0.0
    return x


def assert_matches_reference(x, scale_2=None):
    q = nvfp4.encode(x, 0, scale_2)
    packed, scales, s2 = nvfp4_reference(x, scale_2)
    np.testing.assert_array_equal(q.packed, packed)
    np.testing.assert_array_equal(_bits(q.scale), scales)
    assert np.float32(q.scale_2).tobytes() == np.float32(s2).tobytes()
    return q


def test_special_blocks_match_reference():
    x = special_block_tensor()
    q = assert_matches_reference(x, scale_2=1.0)
    scales = _bits(q.scale)[:, 0]
    assert scales[1] == 0x7E and scales[2] == 0x01 and scales[3] == 0x01  # 448; 2^-9 (clamp) twice
    assert scales[4] == scales[5] == 0x38  # zero blocks -> 1.0
    assert q.scale[7, 0] == 1.0 and q.scale[8, 0] == 1.25
    codes = nvfp4.unpack_codes(q)[:, 0]
    # ties 0.25 0.75 1.25 1.75 2.5 3.5 5 -> 0 1 1 2 2 4 4 (even codes); -0.0 -> +0; -0.1 -> -0
    np.testing.assert_array_equal(codes[:7], [0, 2, 2, 4, 4, 6, 6])
    np.testing.assert_array_equal(codes[7:16], [8, 10, 12, 14, 0, 0, 7, 7, 8])
    np.testing.assert_array_equal(codes[16:19], [7, 7, 15])  # saturated at +-6


def test_random_tensors_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(2):
        assert_matches_reference(random_tensor(rng))


def test_given_global_scale_matches_reference():
    """A slice quantised with its parent's (larger) global scale, and a global scale too small (saturation)."""
    rng = np.random.default_rng(1)
    x = random_tensor(rng, 32, 8)
    s2 = float(nvfp4.global_scale(x))
    assert_matches_reference(x, scale_2=s2 * 3.7)
    assert_matches_reference(x, scale_2=s2 / 50)


def test_all_zero_tensor():
    x = np.zeros((32, 3), np.float32)
    x[5, 1] = -0.0
    q = assert_matches_reference(x)
    assert q.scale_2 == 1.0 and np.all(q.scale.astype(np.float32) == 1.0) and not q.packed.any()
    assert not nvfp4.decode(q).any()


def test_jax_encoder_and_decoder_give_the_same_bits():
    rng = np.random.default_rng(2)
    cases = [(special_block_tensor(), 1.0), (random_tensor(rng), None), (np.zeros((16, 2), np.float32), None)]
    enc = jax.jit(nvfp4.encode_jax, static_argnums=1)
    dec = jax.jit(lambda q: nvfp4.decode_jax(q, jnp.float32))
    for x, s2 in cases:
        q, qj = nvfp4.encode(x, 0, s2), enc(jnp.asarray(x), 0, s2)
        np.testing.assert_array_equal(np.asarray(qj.packed), q.packed)
        np.testing.assert_array_equal(_bits(qj.scale), _bits(q.scale))
        assert np.float32(qj.scale_2) == q.scale_2
        np.testing.assert_array_equal(np.asarray(dec(qj)), nvfp4.decode(q))


def test_ties_under_an_inexact_scale():
    """Values exactly at E2M1 ties of a block whose scale product is not a power of two: numpy, JAX and the
    reference all see the exact quotient (a multiply-by-reciprocal would move many of them off the tie)."""
    rng = np.random.default_rng(7)
    x = rng.uniform(1, 2, size=(128, 16)).astype(np.float32)
    x[0::16] = 6.0  # each block's max
    s2 = np.float32(0.3)
    q = nvfp4.encode(x, 0, s2)
    denom = np.repeat(q.scale.astype(np.float32) * s2, 16, axis=0)
    ties = rng.choice(np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, -0.75, -2.5], np.float32), size=x.shape)
    y = np.where(np.arange(128)[:, None] % 16 == 0, x, ties * denom)
    assert np.mean(y / denom == ties) > 0.5
    q = assert_matches_reference(y, s2)
    qj = jax.jit(nvfp4.encode_jax, static_argnums=1)(jnp.asarray(y), 0, s2)
    np.testing.assert_array_equal(np.asarray(qj.packed), q.packed)
    np.testing.assert_array_equal(_bits(qj.scale), _bits(q.scale))


def test_fake_quantisation_in_one_program_keeps_the_e4m3_rounding():
    """Encode and decode inside one jit equal the host's: the E4M3 block scales stay rounded."""
    x = special_block_tensor()
    fake = jax.jit(lambda v: nvfp4.decode_jax(nvfp4.encode_jax(v, 0, 1.0), jnp.float32))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(fake), nvfp4.decode(nvfp4.encode(x, 0, 1.0)))


def test_input_axis_anywhere_and_bfloat16():
    """Experts [E, in, out] along axis 1 equal each expert's 2-D encoding under the shared global scale; a bf16
    weight encodes as its exact float32 values."""
    rng = np.random.default_rng(3)
    w = random_tensor(rng, 32, 6 * 3).reshape(32, 3, 6).transpose(1, 0, 2).copy()
    q = nvfp4.encode(w, 1)
    for e in range(3):
        qe = nvfp4.encode(w[e], 0, q.scale_2)
        np.testing.assert_array_equal(q.packed[e], qe.packed)
        np.testing.assert_array_equal(_bits(q.scale[e]), _bits(qe.scale))
    np.testing.assert_array_equal(nvfp4.decode(q)[1], nvfp4.decode(nvfp4.encode(w[1], 0, q.scale_2)))
    wt = nvfp4.encode(np.swapaxes(w, 1, 2), 2)  # the same weight stored [E, out, in]
    np.testing.assert_array_equal(np.swapaxes(wt.packed, 1, 2), q.packed)
    b = w.astype(ml_dtypes.bfloat16)
    qb, qf = nvfp4.encode(b, 1), nvfp4.encode(b.astype(np.float32), 1)
    np.testing.assert_array_equal(qb.packed, qf.packed)


def test_decoding_round_trips_through_ml_dtypes():
    rng = np.random.default_rng(4)
    x = random_tensor(rng)
    q = nvfp4.encode(x, 0)
    codes = nvfp4.unpack_codes(q)
    values = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(values, np.vectorize(E2M1_VALUE.get)(codes).astype(np.float32))
    block = np.repeat(q.scale.astype(np.float32) * q.scale_2, 16, axis=0)
    np.testing.assert_array_equal(nvfp4.decode(q), values * block)
    # re-encoding the decoded values under the same scales gives the same codes (ml_dtypes' E2M1 cast; its
    # -0 for a negative zero is the one sign it sets differently)
    again = (nvfp4.decode(q) / block).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    np.testing.assert_array_equal(np.where(codes == 8, 0, again), np.where(codes == 8, 0, codes))
    assert nvfp4.decode(q, ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(nvfp4.pack_codes(codes, 0), q.packed)


def test_e4m3_reference_table_is_ml_dtypes():
    """The reference's value table (built from the bit layout) is the format ml_dtypes decodes."""
    codes = np.array([c for c, _ in E4M3], np.uint8)
    np.testing.assert_array_equal(codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64), [v for _, v in E4M3])


def test_bytes_at_most_0_3_of_bfloat16():
    """Bar 4 on an [in, out] projection of realistic width: packed codes + E4M3 block scales + the global scale."""
    w = np.random.default_rng(5).normal(size=(2048, 1024)).astype(np.float32)
    q = nvfp4.encode(w, 0)
    ratio = q.nbytes / (w.size * 2)
    assert q.nbytes == w.size // 2 + w.size // 16 + 4
    assert ratio <= 0.3, ratio


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((24, 2), np.float32), axis=0), "multiple of 16"),
    (dict(x=np.zeros((16, 2), np.int32), axis=0), "floating-point"),
    (dict(x=np.zeros((16, 2), np.float32), axis=2), "out of range"),
    (dict(x=np.full((16, 2), np.inf, np.float32), axis=0), "non-finite"),
    (dict(x=np.ones((16, 2), np.float32), axis=0, scale_2=0.0), "scale_2"),
])
def test_user_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        nvfp4.encode(**bad)


def test_matches_model_optimizer_when_installed():
    """Against Model-Optimizer's own NVFP4QTensor.quantize (torch [out, in], last axis) where it is installed."""
    qt = pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    cases = [(random_tensor(rng), None), (random_tensor(rng, 32, 40), None), (special_block_tensor(), 1.0),
             (random_tensor(rng, 32, 8).astype(ml_dtypes.bfloat16), None)]
    for x, s2 in cases:
        t = torch.from_numpy(np.ascontiguousarray(x.T.astype(np.float32)))
        if x.dtype == ml_dtypes.bfloat16:
            t = t.to(torch.bfloat16)
        given = None if s2 is None else torch.tensor(s2, dtype=torch.float32)
        packed, scale, scale_2 = qt.NVFP4QTensor.quantize(t.clone(), 16, weights_scaling_factor_2=given)
        q = nvfp4.encode(x, 0, s2)
        np.testing.assert_array_equal(q.packed.T, packed._quantized_data.numpy())
        np.testing.assert_array_equal(_bits(q.scale).T, scale.view(torch.uint8).numpy())
        assert np.float32(q.scale_2) == np.float32(scale_2.item())
        deq = packed.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16})
        np.testing.assert_array_equal(nvfp4.decode(q).T, deq.numpy())

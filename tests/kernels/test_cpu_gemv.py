"""The CPU decode kernels (elastic_jax/kernels/cpu_gemv) against plain JAX on the same inputs, and the model's
batch-1 decoding through them against the model without them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.cpu_gemv.build import default_threads, set_threads
from elastic_jax.kernels.ssd.reference import ssd_step_reference

RNG = np.random.default_rng(0)


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


def test_the_kernels_build_here():
    # the suite runs where a C++ compiler is installed (the project's CI machine too): no silent fallback
    assert cpu_gemv.available()


def test_vector_products_equal_matmul_and_do_not_depend_on_the_thread_count():
    x = normal(1, 1, 300)
    weights = [normal(300, n) for n in (7, 16, 513, 1000)]
    run = jax.jit(cpu_gemv.vector_products)
    outs = run(x, weights)
    for out, w in zip(outs, weights):
        assert out.shape == (1, 1, w.shape[1])
        np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-4)
    try:
        set_threads(1)
        alone = run(x, weights)
        set_threads(3)
        three = run(x, weights)
    finally:
        set_threads(default_threads())
    for a, b, c in zip(outs, alone, three):  # each column is one thread's sum in index order
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_expert_products_read_the_chosen_experts():
    w = normal(6, 300, 129)
    experts = jnp.array([5, 0, 3, 3], jnp.int32)
    one = normal(1, 300)
    got = jax.jit(cpu_gemv.expert_products)(one, w, experts)
    np.testing.assert_allclose(got, jnp.stack([one[0] @ w[e] for e in experts]), rtol=1e-5, atol=1e-4)
    rows = normal(4, 300)
    got = jax.jit(cpu_gemv.expert_products)(rows, w, experts)
    np.testing.assert_allclose(got, jnp.stack([rows[j] @ w[e] for j, e in enumerate(experts)]), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("position", [0, 5, 15])
def test_attention_writes_the_slot_and_attends_to_the_prefix(position):
    kv, groups, d, slots = 2, 3, 8, 16
    q, k, v = normal(kv, groups, d), normal(kv, d), normal(kv, d)
    key_cache, value_cache = normal(1, slots, kv, d), normal(1, slots, kv, d)
    out, keys, values = jax.jit(cpu_gemv.attention, static_argnums=6)(q, k, v, key_cache, value_cache,
                                                                        jnp.int32(position), d ** -0.5)
    want_keys = key_cache.at[0, position].set(k)
    want_values = value_cache.at[0, position].set(v)
    np.testing.assert_array_equal(keys, want_keys)  # the other slots are untouched
    np.testing.assert_array_equal(values, want_values)
    seen_k, seen_v = want_keys[0, :position + 1], want_values[0, :position + 1]  # [s, kv, d]
    scores = jnp.einsum("hgd,shd->hgs", q, seen_k) * d ** -0.5
    want = jnp.einsum("hgs,shd->hgd", jax.nn.softmax(scores, -1), seen_v)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_attention_outside_the_cache_is_an_error_not_a_write():
    q, k = normal(2, 1, 8), normal(2, 8)
    cache = normal(1, 4, 2, 8)
    with pytest.raises(Exception, match="position outside the cache"):
        jax.block_until_ready(jax.jit(cpu_gemv.attention, static_argnums=6)(q, k, k, cache, cache, jnp.int32(4), 1.0))


def test_ssm_step_equals_the_reference_recurrence():
    heads, p, groups, n = 4, 8, 2, 16
    state, x = normal(1, heads, p, n), normal(heads, p)
    dt = jax.nn.softplus(normal(heads))
    a, d = -jnp.exp(normal(heads)), normal(heads)
    b, c = normal(groups, n), normal(groups, n)
    want_y, want_state = ssd_step_reference(state, x[None], dt[None], a, b[None], c[None], d)
    y, new_state = jax.jit(cpu_gemv.ssm_step)(state, x, dt, a, b, c, d)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, want_y[0], rtol=1e-5, atol=1e-5)


def test_active_only_inside_the_context_for_one_float32_row():
    row, rows = jnp.zeros((1, 1, 8)), jnp.zeros((2, 1, 8))
    assert not cpu_gemv.active(row)
    with cpu_gemv.decode_products():
        assert cpu_gemv.active(row)
        assert not cpu_gemv.active(rows)
        assert not cpu_gemv.active(row.astype(jnp.bfloat16))
    assert not cpu_gemv.active(row)


def test_without_a_compiler_decoding_falls_back_to_xla_with_one_warning(tmp_path):
    """A host whose C++ compiler fails: one warning names the build, `available()` is False, and generate runs
    through XLA's products (the same tokens as with the kernels)."""
    import os
    import subprocess
    import sys

    script = (
        "import logging, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import elastic_jax as ej\n"
        "from elastic_jax.kernels import cpu_gemv\n"
        "cfg = ej.load_config('tiny'); params = ej.init_params(cfg, 0)\n"
        "print('available', cpu_gemv.available())\n"
        "print('tokens', ej.generate(cfg, params, np.array([[1, 5, 7]]), 6, eos_id=-1)[0].tolist())\n"
    )
    env = {**os.environ, "CXX": "/bin/false", "PATH": "/nonexistent", "ELASTIC_JAX_CACHE": str(tmp_path),
           "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "available False" in run.stdout
    assert run.stderr.count("CPU decode kernels unavailable") == 1
    import elastic_jax as ej

    cfg = ej.load_config("tiny")
    ours = ej.generate(cfg, ej.init_params(cfg, 0), np.array([[1, 5, 7]]), 6, eos_id=-1)[0].tolist()
    assert f"tokens {ours}" in run.stdout


def test_a_bad_thread_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("ELASTIC_JAX_DECODE_THREADS", "two")
    with pytest.raises(ValueError, match="ELASTIC_JAX_DECODE_THREADS must be a positive integer"):
        default_threads()
    monkeypatch.setenv("ELASTIC_JAX_DECODE_THREADS", "3")
    assert default_threads() == 3

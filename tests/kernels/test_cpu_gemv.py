"""The CPU decode kernels (elastic_jax/kernels/cpu_gemv) against plain JAX on the same inputs; every buffer of every
handler checked; the build outside any trace with a cache key that covers what the library depends on; the
thread team's threads joined; and, where the kernels cannot be built, decoding on XLA's products instead."""

import functools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.cpu_gemv import build
from elastic_jax.kernels.cpu_gemv.build import default_threads, set_threads
from elastic_jax.kernels.ssd.reference import ssd_step_reference

RNG = np.random.default_rng(0)
F32 = jnp.float32
REASON = build.unavailable_reason() or (None if cpu_gemv.available() else f"JAX runs on {jax.default_backend()}")
needs_kernels = pytest.mark.skipif(REASON is not None, reason=f"the CPU decode kernels are unavailable: {REASON}")


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape), F32)


def compiler_or_skip() -> str:
    try:
        return build._compiler()
    except build.Unavailable as err:
        pytest.skip(str(err))


def test_the_kernels_build_wherever_x86_64_has_a_compiler():
    """The project's machines (and CI's) build them: no silent fallback to XLA there."""
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get(build.DISABLE_ENV) == "0":
        pytest.skip(f"kernels not built here by design ({platform.machine()}, {build.DISABLE_ENV})")
    compiler_or_skip()
    assert build.unavailable_reason() is None
    assert cpu_gemv.available() == (jax.default_backend() == "cpu")


def test_the_cache_key_covers_the_compile_command_and_jaxlib(monkeypatch):
    compiler = compiler_or_skip()
    base = build.cache_key(compiler, "/include")
    assert build.cache_key(compiler, "/include") == base
    assert build.cache_key(compiler, "/other/include") != base  # the exact command line
    monkeypatch.setattr(build, "FLAGS", (*build.FLAGS, "-DNDEBUG"))
    assert "-DNDEBUG" in build.command(compiler, "/include", "out.so")
    flags = build.cache_key(compiler, "/include")
    monkeypatch.setattr(build.jaxlib, "__version__", "0.0.0")
    assert len({base, flags, build.cache_key(compiler, "/include")}) == 3


def run_script(script: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-c", script], env=full, capture_output=True, text=True, timeout=600)


@needs_kernels
def test_the_kernels_are_never_built_while_tracing(monkeypatch):
    """As in a fresh process (nothing built yet), tracing a kernel call is refused with what to do; after
    ensure_built() the same program runs."""
    monkeypatch.setattr(build, "_outcome", functools.cache(build._outcome.__wrapped__))
    f = jax.jit(lambda x, w: cpu_gemv.vector_products(x, [w])[0])
    x, w = jnp.ones((1, 8)), jnp.ones((8, 4))
    with pytest.raises(RuntimeError, match=r"built outside a trace: call .*ensure_built\(\)"):
        f(x, w)
    assert build.ensure_built() is not None
    np.testing.assert_array_equal(f(x, w), np.full((1, 4), 8.0))


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, 5, 11])
def test_vector_products_equal_matmul_and_do_not_depend_on_the_thread_count(rows):
    """A few rows (11: a group of 8 and one of 3) times weights of odd widths, split over 1, 2 and 3 threads."""
    x = normal(1, rows, 301)
    weights = [normal(301, n) for n in (7, 16, 513, 1000)]
    run = jax.jit(cpu_gemv.vector_products)
    outs = run(x, weights)
    for out, w in zip(outs, weights):
        assert out.shape == (1, rows, w.shape[1])
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


def process_threads() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


@needs_kernels
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/self/status (Linux)")
def test_changing_the_thread_count_joins_the_old_teams_threads():
    x, w = normal(1, 64), normal(64, 256)
    run = jax.jit(lambda x, w: cpu_gemv.vector_products(x, [w])[0])
    want = x @ w
    try:
        set_threads(2)
        run(x, w).block_until_ready()
        before = process_threads()
        set_threads(8)
        np.testing.assert_allclose(run(x, w), want, rtol=1e-5, atol=1e-4)
        assert process_threads() >= before + 6  # the count sees the team's helpers
        for threads in (5, 6, 7, 8) * 5:  # 130 helpers made in all
            set_threads(threads)
            np.testing.assert_allclose(run(x, w), want, rtol=1e-5, atol=1e-4)
        set_threads(2)
        run(x, w).block_until_ready()
        after = process_threads()
    finally:
        set_threads(default_threads())
    assert after <= before + 2, (before, after)


@needs_kernels
@pytest.mark.parametrize("tokens", [1, 3, 7])
def test_expert_products_read_the_chosen_experts(tokens):
    """Up (one row per token for all its experts) and down (one row per pick) for tokens that share experts: each
    chosen expert is read once for all of its tokens (10 tokens of one expert: a group of 8 and one of 2)."""
    w = normal(6, 301, 129)
    experts = jnp.asarray(RNG.choice(6, (tokens, 4)), jnp.int32).at[:, 0].set(3)  # repeats within a token too
    x = normal(tokens, 301)
    got = jax.jit(cpu_gemv.expert_products)(x, w, experts)
    np.testing.assert_allclose(got, jnp.einsum("tk,tjkn->tjn", x, w[experts]), rtol=1e-5, atol=1e-4)
    rows = normal(tokens, 4, 129)
    down = jnp.transpose(w, (0, 2, 1))
    got = jax.jit(cpu_gemv.expert_products)(rows, down, experts)
    np.testing.assert_allclose(got, jnp.einsum("tjk,tjkn->tjn", rows, down[experts]), rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("ids, message", [
    ([[5, 6]], r"idx\[0, 1\] = 6 is not an expert of w \(allowed: 0 to 5\)"),
    ([[0, 1], [-1, 0]], r"idx\[1, 0\] = -1 is not an expert of w")])
def test_an_expert_id_out_of_range_is_an_error_not_a_clamp(ids, message):
    ids = jnp.array(ids, jnp.int32)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(cpu_gemv.expert_products(normal(ids.shape[0], 32), normal(6, 32, 16), ids))


@needs_kernels
@pytest.mark.parametrize("position, length", [(0, 1), (5, 1), (15, 1), (0, 3), (9, 5)])
def test_attention_writes_the_slots_and_attends_to_the_prefix(position, length):
    kv, groups, d, slots = 2, 3, 8, 16
    q, k, v = normal(length, kv, groups, d), normal(length, kv, d), normal(length, kv, d)
    key_cache, value_cache = normal(1, slots, kv, d), normal(1, slots, kv, d)
    out, keys, values = jax.jit(cpu_gemv.attention, static_argnums=6)(q, k, v, key_cache, value_cache,
                                                                        jnp.int32(position), d ** -0.5)
    want_keys = key_cache.at[0, position:position + length].set(k)
    want_values = value_cache.at[0, position:position + length].set(v)
    np.testing.assert_array_equal(keys, want_keys)  # the other slots are untouched
    np.testing.assert_array_equal(values, want_values)
    for i in range(length):  # query i sees slots 0..position + i
        seen_k, seen_v = want_keys[0, :position + i + 1], want_values[0, :position + i + 1]  # [s, kv, d]
        scores = jnp.einsum("hgd,shd->hgs", q[i], seen_k) * d ** -0.5
        want = jnp.einsum("hgs,shd->hgd", jax.nn.softmax(scores, -1), seen_v)
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("position, length", [(4, 1), (2, 3)])
def test_attention_outside_the_cache_is_an_error_not_a_write(position, length):
    q, k = normal(length, 2, 1, 8), normal(length, 2, 8)
    cache = normal(1, 4, 2, 8)
    message = rf"positions {position} to {position + length - 1} outside the cache \(allowed: 0 to 3\)"
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(jax.jit(cpu_gemv.attention, static_argnums=6)(q, k, k, cache, cache,
                                                                            jnp.int32(position), 1.0))


@needs_kernels
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


# Each target's buffers, well formed: (arguments, results, attributes), named as the handlers name them, in order.
I32 = jnp.int32
BUFFERS = {
    "elastic_jax_products": ({"x": ((3, 16), F32), "weight 0": ((16, 8), F32), "weight 1": ((16, 24), F32)},
                             {"output 0": ((3, 8), F32), "output 1": ((3, 24), F32)}, {}),
    "elastic_jax_experts": ({"x": ((2, 16), F32), "w": ((3, 16, 8), F32), "idx": ((2, 2), I32)},
                            {"y": ((2, 2, 8), F32)}, {}),
    "elastic_jax_attention": ({"q": ((2, 2, 3, 8), F32), "k": ((2, 2, 8), F32), "v": ((2, 2, 8), F32),
                               "key_cache": ((1, 4, 2, 8), F32), "value_cache": ((1, 4, 2, 8), F32),
                               "position": ((), I32)},
                              {"out": ((2, 2, 3, 8), F32), "new_keys": ((1, 4, 2, 8), F32),
                               "new_values": ((1, 4, 2, 8), F32)}, {"scale": np.float32(1.0)}),
    "elastic_jax_ssm_step": ({"state": ((4, 2, 8), F32), "x": ((4, 2), F32), "dt": ((4,), F32), "A": ((4,), F32),
                              "B": ((2, 8), F32), "C": ((2, 8), F32), "D": ((4,), F32)},
                             {"y": ((4, 2), F32), "new_state": ((4, 2, 8), F32)}, {}),
}
# One wrong shape for each buffer (the others as above).
WRONG_SHAPES = {
    "elastic_jax_products": {"x": (16,), "weight 0": (15, 8), "weight 1": (16,), "output 0": (3, 9),
                             "output 1": (2, 24)},
    "elastic_jax_experts": {"x": (3, 16), "w": (3, 16), "idx": (2,), "y": (2, 2, 9)},
    "elastic_jax_attention": {"q": (2, 3, 8), "k": (1, 2, 8), "v": (2, 3, 8), "key_cache": (1, 4, 2, 7),
                              "value_cache": (1, 5, 2, 8), "position": (1,), "out": (2, 2, 3, 7),
                              "new_keys": (1, 5, 2, 8), "new_values": (4, 2, 8)},
    "elastic_jax_ssm_step": {"state": (2, 4, 2, 8), "x": (4, 3), "dt": (3,), "A": (4, 1), "B": (3, 8),
                             "C": (2, 7), "D": (5,), "y": (4, 2, 1), "new_state": (1, 4, 2, 8)},
}
CASES = [(target, name, kind) for target, names in WRONG_SHAPES.items() for name in names
         for kind in ("shape", "dtype")]


def call_with(target: str, name: str, kind: str):
    """Call `target` on its well-formed buffers but `name`, given a wrong shape or dtype."""
    args, results, attributes = BUFFERS[target]

    def make(buffer, shape, dtype):
        if buffer == name:
            if kind == "shape":
                shape = WRONG_SHAPES[target][name]
            else:
                dtype = F32 if dtype == I32 else jnp.float16
        return shape, dtype

    arrays = [jnp.zeros(*make(b, shape, dtype)) for b, (shape, dtype) in args.items()]
    specs = [jax.ShapeDtypeStruct(*make(b, shape, dtype)) for b, (shape, dtype) in results.items()]
    return jax.block_until_ready(jax.ffi.ffi_call(target, specs)(*arrays, **attributes))


@needs_kernels
@pytest.mark.parametrize("target, name, kind", CASES)
def test_every_buffer_of_every_kernel_is_checked(target, name, kind):
    with pytest.raises(Exception, match=re.escape(f"{target}: {name} must be") + ".*, got"):
        call_with(target, name, kind)


@needs_kernels
@pytest.mark.parametrize("target", list(BUFFERS))
def test_the_well_formed_buffers_pass_the_checks(target):
    call_with(target, "none", "shape")  # the cases above fail only for the buffer they change


def test_without_a_compiler_decoding_falls_back_to_xla_with_one_warning(tmp_path):
    """CXX names a compiler that does not exist: one warning says so, `available()` is False, and generate runs
    through XLA's products (the same tokens as this process, with the kernels where they build)."""
    script = (
        "import logging, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import elastic_jax as ej\n"
        "from elastic_jax.kernels import cpu_gemv\n"
        "from elastic_jax.kernels.cpu_gemv import build\n"
        "cfg = ej.load_config('tiny'); params = ej.init_params(cfg, 0)\n"
        "print('available', cpu_gemv.available())\n"
        "print('reason', build.unavailable_reason())\n"
        "print('tokens', ej.generate(cfg, params, np.array([[1, 5, 7]]), 6, eos_id=-1)[0].tolist())\n"
    )
    run = run_script(script, CXX=str(tmp_path / "no-such-c++"), ELASTIC_JAX_CACHE=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "available False" in run.stdout
    assert f"reason CXX={tmp_path / 'no-such-c++'} is not an executable C++ compiler" in run.stdout
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
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        set_threads(0)

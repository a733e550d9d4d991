"""Cached decoding computes exactly what the full forward pass computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.convert.hf_weights import to_hf_tensors
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.decode_views import DECODE_VIEWS, GEMV_BLOCK_ELEMENTS, MAMBA_INPUTS, column_blocks, decode_views
from elastic_jax.model.experts import experts_dense
from elastic_jax.model.functional import build
from tests.model.helpers import PARITY_CONFIGS, random_params, random_tokens


@pytest.mark.parametrize("name", ["all_blocks", "grouped_routing"])
def test_decode_steps_equal_full_forward(name):
    cfg = PARITY_CONFIGS[name]
    params = random_params(cfg, seed=11)
    tokens = random_tokens(cfg, batch=2, length=cfg.chunk_size + 6, seed=12)
    full = np.asarray(ej.apply(cfg, params, tokens))
    split = 5
    logits, cache = ej.prefill(cfg, params, tokens[:, :split], max_len=tokens.shape[1])
    np.testing.assert_allclose(np.asarray(logits), full[:, :split], atol=1e-5, rtol=0)
    for t in range(split, tokens.shape[1]):
        logits, cache = ej.decode_step(cfg, params, tokens[:, t:t + 1], cache)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=1e-5, rtol=0, err_msg=f"position {t}")
    assert int(cache["pos"]) == tokens.shape[1]


def test_prefill_in_two_pieces_equals_one():
    cfg = PARITY_CONFIGS["deep_mqa"]
    params = random_params(cfg, seed=13)
    tokens = random_tokens(cfg, batch=2, length=37, seed=14)
    full = np.asarray(ej.apply(cfg, params, tokens))
    first, cache = ej.prefill(cfg, params, tokens[:, :20], max_len=40)
    second, _ = ej.prefill(cfg, params, tokens[:, 20:], max_len=40, cache=cache)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_respects_top_k():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = random_params(cfg, seed=15)
    prompt = random_tokens(cfg, 2, 4, seed=16)
    a = ej.generate(cfg, params, prompt, 12, temperature=1.0, top_k=5, top_p=0.9, seed=3, eos_id=cfg.vocab_size - 1)
    b = ej.generate(cfg, params, prompt, 12, temperature=1.0, top_k=5, top_p=0.9, seed=3, eos_id=cfg.vocab_size - 1)
    np.testing.assert_array_equal(a, b)
    # with top_k=1 sampling is greedy
    g = ej.generate(cfg, params, prompt, 12, eos_id=cfg.vocab_size - 1)
    k1 = ej.generate(cfg, params, prompt, 12, temperature=0.7, top_k=1, seed=9, eos_id=cfg.vocab_size - 1)
    np.testing.assert_array_equal(g, k1)


def test_bf16_compute_stays_close_to_fp32():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = random_params(cfg, seed=17)
    tokens = random_tokens(cfg, 2, 20, seed=18)
    full = np.asarray(ej.apply(cfg, params, tokens))
    half = np.asarray(ej.apply(cfg.replace(compute_dtype="bfloat16"), params, tokens))
    assert half.dtype == np.float32
    assert np.abs(half - full).max() < 0.1 * np.abs(full).max()
    assert jnp.isfinite(half).all()


@pytest.mark.parametrize("batch", [1, 2])
def test_generate_equals_step_by_step_decoding(batch):
    """`generate` decodes one prompt on the CPU decode kernels and several under vmap (experts gathered, or dense
    for all the rows); `decode_step` over the parameters alone: same tokens."""
    cfg = PARITY_CONFIGS["grouped_routing"]
    params = random_params(cfg, seed=21)
    prompt = random_tokens(cfg, batch=batch, length=6, seed=22)
    new = 10
    got = np.asarray(ej.generate(cfg, params, prompt, new, eos_id=cfg.vocab_size))
    logits, cache = ej.prefill(cfg, params, prompt, max_len=prompt.shape[1] + new)
    want = []
    for _ in range(new):
        tok = jnp.argmax(logits[:, -1], axis=-1)[:, None]
        want.append(np.asarray(tok[:, 0]))
        logits, cache = ej.decode_step(cfg, params, tok, cache)
    np.testing.assert_array_equal(got[:, prompt.shape[1]:], np.stack(want, 1))  # generate returns prompt + new


def test_decode_step_over_decode_views_equals_the_parameters_alone():
    """Both views change how a decode step reads its weights, not what it computes: logits equal to 1e-5 at every
    step; the fused Mamba view is transformers' in_proj layout [z | x | B | C | dt]."""
    cfg = PARITY_CONFIGS["grouped_routing"]
    params = random_params(cfg, seed=23)
    views = decode_views(params, jnp.float32)
    mamba = params["layers_0"]["mixer"]
    fused = jnp.concatenate(views["layers_0"]["mixer"]["in_proj"], axis=1)
    assert fused.shape[1] == sum(mamba[name]["kernel"].shape[1] for name in MAMBA_INPUTS)
    assert "in_proj" not in views["layers_1"]["mixer"] and len(views["layers_1"]["mixer"]["up_proj"]) == 8
    hf_in_proj = dict(to_hf_tensors(cfg, jax.device_get(params)))["backbone.layers.0.mixer.in_proj.weight"]
    np.testing.assert_array_equal(np.asarray(fused).T, np.asarray(hf_in_proj))
    model, viewing = build(cfg), build(cfg, target=CompileTarget("cpu", decode="views"))
    prompt = random_tokens(cfg, batch=1, length=5, seed=24)
    _, cache = ej.prefill(cfg, params, prompt, max_len=12)
    step = jax.jit(lambda variables, tok, cache: model.apply(variables, tok, cache))
    viewed_step = jax.jit(lambda variables, tok, cache: viewing.apply(variables, tok, cache))
    plain, viewed = cache, cache
    for tok in random_tokens(cfg, batch=1, length=6, seed=25).T:
        want, plain = step({"params": params}, tok[:, None], plain)
        got, viewed = viewed_step({"params": params, DECODE_VIEWS: views}, tok[:, None], viewed)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_dense_experts_equal_the_routed_sum(with_mask):
    """Batched decode's form (every expert for every token, the unchosen dropped) against each token's chosen
    experts alone, weighted and summed."""
    rng = np.random.default_rng(5)
    tokens, experts, dim, ffn, k = 6, 5, 12, 16, 2
    x = jnp.asarray(rng.standard_normal((tokens, dim)), jnp.float32)
    up = jnp.asarray(rng.standard_normal((experts, dim, ffn)) * 0.3, jnp.float32)
    down = jnp.asarray(rng.standard_normal((experts, ffn, dim)) * 0.3, jnp.float32)
    idx = jnp.asarray(np.stack([rng.choice(experts, k, replace=False) for _ in range(tokens)]), jnp.int32)
    weights = jnp.asarray(rng.uniform(0.1, 1.0, (tokens, k)), jnp.float32)
    mask = jnp.asarray(rng.uniform(0.2, 1.0, ffn), jnp.float32) if with_mask else None
    got = jax.jit(experts_dense)(x, idx, weights, up, down, mask)
    want = np.zeros((tokens, dim), np.float32)
    for t in range(tokens):
        for j in range(k):
            e = int(idx[t, j])
            h = np.square(np.maximum(np.asarray(x[t]) @ np.asarray(up[e]), 0)) * (1.0 if mask is None else mask)
            want[t] += float(weights[t, j]) * (h @ np.asarray(down[e]))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_column_blocks_cover_the_matrix_in_blocks_of_about_the_gemv_size():
    """A decode view's column blocks concatenate back to the matrix; a matrix at most ~1.5x the block size stays
    whole, `small`'s Mamba in_proj [512, 2576] is two blocks."""
    w = jnp.arange(512 * 2576, dtype=jnp.float32).reshape(512, 2576)
    blocks = column_blocks(w)
    assert [b.shape for b in blocks] == [(512, 1288), (512, 1288)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), np.asarray(w))
    assert len(column_blocks(w[:, :1024])) == 1 and len(column_blocks(w[:64, :40])) == 1
    assert all(b.shape[0] * b.shape[1] <= 1.5 * GEMV_BLOCK_ELEMENTS for b in column_blocks(jnp.ones((512, 9000))))


@pytest.mark.parametrize("name", ["all_blocks", "grouped_routing"])
def test_decode_steps_on_the_cpu_kernels_equal_the_plain_model(name):
    """Batch-1 decoding through kernels/cpu_gemv (products split over threads, experts read in place, attention
    and the Mamba state updated in place) computes what the model computes without them: logits and every cache
    array to 1e-5 at each step."""
    from elastic_jax.kernels import cpu_gemv

    assert cpu_gemv.available()
    cfg = PARITY_CONFIGS[name]
    params = random_params(cfg, seed=26)
    model, on_kernels = build(cfg), build(cfg, target=CompileTarget("cpu", decode="kernels", kernels=cpu_gemv.KERNELS))
    _, cache = ej.prefill(cfg, params, random_tokens(cfg, batch=1, length=7, seed=27), max_len=16)
    plain = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c))
    kernels = jax.jit(lambda p, t, c: on_kernels.apply({"params": p}, t, c))
    want_cache, got_cache = cache, cache
    for tok in random_tokens(cfg, batch=1, length=6, seed=28).T:
        want, want_cache = plain(params, tok[:, None], want_cache)
        got, got_cache = kernels(params, tok[:, None], got_cache)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
                     got_cache, want_cache)
    lowered = kernels.lower(params, tok[:, None], got_cache).as_text()
    assert all(f"elastic_jax_{name}" in lowered for name in ("products", "experts", "attention", "ssm_step"))

"""The expert forms (the CPU block loop with its hand-written backward, ragged_dot, gathered, switched over views,
dense) against a per-row reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.decode_views import decode_views
from elastic_jax.model.experts import experts_gathered, experts_ragged, experts_switched
from elastic_jax.model.experts_looped import experts_looped
from elastic_jax.model.masks import LayerMasks
from elastic_jax.model.moe import DENSE_MAX_TOKENS, MoE, choose_strategy

NUM_EXPERTS, DIM, FFN = 5, 12, 16


def reference(x_rows, group_sizes, up, down, ffn_mask):
    """Row by row: each row through its own expert's weights."""
    expert_of_row = jnp.repeat(jnp.arange(up.shape[0]), group_sizes, total_repeat_length=x_rows.shape[0])
    h = jnp.square(jax.nn.relu(jnp.einsum("rd,rdf->rf", x_rows, up[expert_of_row]))) * ffn_mask
    return jnp.einsum("rf,rfd->rd", h, down[expert_of_row])


def make_case(seed: int, group_sizes: list[int]):
    rng = np.random.default_rng(seed)
    rows = sum(group_sizes)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    return (f(rows, DIM), jnp.asarray(group_sizes, jnp.int32), f(NUM_EXPERTS, DIM, FFN) * 0.3,
            f(NUM_EXPERTS, FFN, DIM) * 0.3, jnp.asarray(rng.uniform(0.2, 1.0, FFN), jnp.float32), f(rows, DIM))


CASES = {
    "balanced": [7, 9, 8, 6, 10],
    "one_expert_takes_all": [0, 40, 0, 0, 0],
    "empty_and_ragged": [13, 0, 1, 0, 19],
    "block_multiples": [8, 16, 0, 8, 8],
    "decode_sized": [1, 0, 2, 0, 1],  # no more rows than experts, as the gathered strategy sees them
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", ["looped", "ragged", "gathered"])
def test_experts_match_reference_values_and_gradients(case, impl):
    x, sizes, up, down, mask, cot = make_case(len(case), CASES[case])
    fn = {"looped": lambda *a, **k: experts_looped(*a, **k, block=8),
          "ragged": lambda *a, **k: experts_ragged(*a, **k)[0], "gathered": experts_gathered}[impl]

    def loss(f, x, up, down, mask):
        return jnp.sum(f(x, sizes, up, down, ffn_mask=mask) * cot)

    got = jax.jit(lambda *a: fn(*a[:4], ffn_mask=a[4]))(x, sizes, up, down, mask)
    want = reference(x, sizes, up, down, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3)))(x, up, down, mask)
    want_grads = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2, 3))(x, up, down, mask)
    for name, g, w in zip(("x", "up", "down", "ffn_mask"), grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_looped_without_mask_and_in_bfloat16():
    x, sizes, up, down, _, cot = make_case(3, CASES["balanced"])
    ones = jnp.ones((FFN,), jnp.float32)
    want = reference(x, sizes, up, down, ones)
    np.testing.assert_allclose(experts_looped(x, sizes, up, down), want, rtol=1e-5, atol=1e-5)
    bf = lambda v: v.astype(jnp.bfloat16)
    got = experts_looped(bf(x), sizes, bf(up), bf(down))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=5e-2, atol=5e-2)


def test_looped_default_block_on_heavy_loads():
    """Loads of hundreds of rows per expert take the 128-row block; ragged, empty and one-row experts included."""
    x, sizes, up, down, mask, cot = make_case(5, [700, 0, 1300, 129, 1])
    assert x.shape[0] >= 384 * NUM_EXPERTS
    loss = lambda f, x, up, down: jnp.sum(f(x, sizes, up, down, ffn_mask=mask) * cot)
    np.testing.assert_allclose(jax.jit(experts_looped)(x, sizes, up, down, mask), reference(x, sizes, up, down, mask),
                               rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: loss(experts_looped, *a), argnums=(0, 1, 2)))(x, up, down)
    want = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(x, up, down)
    for name, g, w in zip(("x", "up", "down"), grads, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-3, err_msg=name)


@pytest.mark.parametrize("with_mask", [False, True])
def test_switched_experts_on_decode_rows_match_reference(with_mask):
    """Cached decoding's form: per-expert arrays from `decode_views`, one `lax.switch` per routed row."""
    x, sizes, up, down, mask, _ = make_case(11, CASES["decode_sized"])
    views = decode_views({"layers_1": {"mixer": {"up_proj": up, "down_proj": down}}}, jnp.float32)
    mixer = views["layers_1"]["mixer"]
    assert len(mixer["up_proj"]) == NUM_EXPERTS and mixer["down_proj"][2].shape == (FFN, DIM)
    ffn_mask = mask if with_mask else None
    got = jax.jit(experts_switched)(x, sizes, mixer["up_proj"], mixer["down_proj"], ffn_mask)
    want = reference(x, sizes, up, down, mask if with_mask else jnp.ones(FFN))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_strategy_follows_the_token_count():
    """One token (decode) is gathered, so is a few rows per expert; then dense; grouped past DENSE_MAX_TOKENS."""
    assert choose_strategy(1, 8, 8) == "gathered"
    assert choose_strategy(2, 2, 16) == "gathered" and choose_strategy(3, 2, 16) == "dense"
    assert choose_strategy(DENSE_MAX_TOKENS, 2, 16) == "dense"
    assert choose_strategy(DENSE_MAX_TOKENS + 1, 2, 16) == "grouped"


def test_every_strategy_gives_the_layers_output():
    """A MoE layer (routing, shared expert, masks) computes the same in each strategy, on the CPU and the
    accelerator forms of grouping (the block loop, ragged_dot)."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, DIM)), jnp.float32)
    masks = LayerMasks(experts=jnp.asarray([1, 1, 0.5, 1, 0], jnp.float32), expert_ffn=jnp.linspace(0.2, 1, FFN))
    layer = MoE(hidden_size=DIM, num_experts=NUM_EXPERTS, top_k=2, expert_size=FFN, shared_size=8)
    params = layer.init(jax.random.PRNGKey(0), x)
    want = layer.clone(strategy="gathered").apply(params, x, masks=masks)[0]
    forms = (("dense", CompileTarget()), ("grouped", CompileTarget()), ("grouped", CompileTarget("gpu")))
    for strategy, target in forms:
        got = layer.clone(strategy=strategy, target=target).apply(params, x, masks=masks)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{strategy} {target.platform}")

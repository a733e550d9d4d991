"""The router: exact expected accounting, budget interpolation, targets met, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import elastic_jax as ej
from elastic_jax.config import ConfigError
from elastic_jax.elastic.accounting import count_params
from elastic_jax.elastic.router import (
    Router,
    RouterConfig,
    argmax_spec,
    budget_code,
    build_axes,
    expected_config,
    router_logits,
    width_multiple,
)
from elastic_jax.elastic.router.chain import training_floors
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import Budget, ElasticError

CFG = ej.load_config("tiny")


def _one_hot_at_argmax(router: Router, params: dict, budget: float) -> dict:
    logits = router_logits(params, jnp.asarray(budget_code(router.rc, budget)), router.axes)
    return {k: jax.nn.one_hot(jnp.argmax(v, -1), v.shape[-1]) for k, v in logits.items()}


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_expected_accounting_equals_the_argmax_architecture(heterogeneous):
    router = Router(CFG, RouterConfig(heterogeneous=heterogeneous))
    params = router.init(jax.random.PRNGKey(3))
    params = jax.tree.map(lambda x: x * 300.0, params)  # spread the choices
    for budget in (1.0, 0.7, 0.4, 0.55):
        logits = router_logits(params, jnp.asarray(budget_code(router.rc, budget)), router.axes)
        spec = argmax_spec(CFG, router.rc, router.axes, logits)
        expected = expected_config(CFG, router.axes, _one_hot_at_argmax(router, params, budget))
        for metric in ("total_params", "active_params", "memory"):
            m = Budget(budget, metric)
            assert float(m.measure(expected)) == pytest.approx(m.measure(spec.apply_to(CFG)), rel=1e-6)
        assert count_params(spec.apply_to(CFG)) == tuple(int(round(float(v))) for v in count_params(expected))


@pytest.mark.parametrize("metric", ["active_params", "total_params"])
@pytest.mark.parametrize("heterogeneous", [False, True])
def test_deployed_architecture_is_within_tolerance_even_for_an_untrained_router(metric, heterogeneous):
    """Coarse choices (a tiny model's step can be wider than the band) must not make the repair overshoot."""
    rc = RouterConfig(budgets=(1.0, 0.7, 0.4), metric=metric, heterogeneous=heterogeneous)
    router = Router(CFG, rc)
    for seed in range(6):
        params = jax.tree.map(lambda x: x * 100.0, router.init(jax.random.PRNGKey(seed)))
        _assert_within_tolerance(router, params, rc)


def _assert_within_tolerance(router: Router, params: dict, rc: RouterConfig) -> None:
    for budget in (1.0, 0.7, 0.55, 0.45, 0.4):
        ratio = Budget(budget, rc.metric).measure(router.spec_for(params, budget).apply_to(CFG)) / \
            Budget(budget, rc.metric).target(CFG)
        assert abs(ratio - 1) <= rc.tolerance, (budget, ratio)


def test_budget_code_interpolates_between_trained_budgets():
    rc = RouterConfig(budgets=(1.0, 0.7, 0.4))
    np.testing.assert_allclose(budget_code(rc, 0.7), [0, 1, 0])
    np.testing.assert_allclose(budget_code(rc, 0.55), [0, 0.5, 0.5])
    np.testing.assert_allclose(budget_code(rc, 0.85), [0.5, 0.5, 0])
    with pytest.raises(ElasticError, match=r"outside the trained range \[0.4, 1.0\]"):
        budget_code(rc, 0.3)


@pytest.mark.parametrize("metric", ["total_params", "active_params"])
def test_router_alone_meets_its_targets_within_tolerance(metric):
    """Minimising the resource loss alone drives every budget's argmax architecture within 5% of its target."""
    rc = RouterConfig(budgets=(1.0, 0.7, 0.4), metric=metric)
    router = Router(CFG, rc)
    params = router.init(jax.random.PRNGKey(0))
    opt = optax.adam(3e-2)
    state = opt.init(params)
    steps = 300

    def loss_fn(p, key, progress):
        return sum(router.sample(p, i, k, progress)[1] for i, k in enumerate(jax.random.split(key, 3)))

    @jax.jit
    def step(p, s, key, progress):
        grads = jax.grad(loss_fn)(p, key, progress)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    for i in range(steps):
        params, state = step(params, state, jax.random.PRNGKey(i), jnp.asarray(i / steps))
    for budget in rc.budgets:
        sub = router.spec_for(params, budget).apply_to(CFG)
        ratio = Budget(budget, metric).measure(sub) / Budget(budget, metric).target(CFG)
        assert abs(ratio - 1) <= rc.tolerance + 1e-9, (budget, ratio)


def test_hard_router_masks_equal_the_sliced_model():
    router = Router(CFG, RouterConfig())
    params = jax.tree.map(lambda x: x * 300.0, router.init(jax.random.PRNGKey(5)))
    model = ej.init_params(CFG, 0)
    tokens = np.random.default_rng(0).integers(3, CFG.vocab_size, (2, 40))
    masks, _, _, _ = router.sample(params, 2, None, jnp.asarray(1.0))  # no noise, low temperature: the argmax
    logits = router_logits(params, jnp.asarray(router.codes[2]), router.axes)
    floor = training_floors(params, router.rc, router.axes, router.codes, 2)  # the nested chain's bound
    spec = argmax_spec(CFG, router.rc, router.axes, logits, floor=floor)
    sub_params, sub_cfg = slice_params(model, CFG, spec)
    np.testing.assert_allclose(np.asarray(ej.apply(CFG, model, tokens, masks=masks)),
                               np.asarray(ej.apply(sub_cfg, sub_params, tokens)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("budgets, match", [((1.0, -0.2), r"in \(0, 1\]"), ((1.0, 1.3), r"in \(0, 1\]"),
                                            ((1.0, 0.5, 0.5), "duplicated")])
def test_bad_budgets(budgets, match):
    with pytest.raises(ConfigError, match=match):
        RouterConfig(budgets=budgets)


def test_unknown_axis_and_metric():
    with pytest.raises(ConfigError, match=r"router.axes: unknown axis \['heads'\]"):
        RouterConfig(axes=("hidden", "heads"))
    with pytest.raises(ConfigError, match="router.metric: unknown 'flops'"):
        RouterConfig(metric="flops")


@pytest.mark.parametrize("config", ["tiny", "small", "nemotron3_nano_30b_a3b"])
def test_candidate_widths_are_aligned_and_keep_every_choice(config):
    cfg = ej.load_config(config)
    rc = RouterConfig()
    for axis in build_axes(cfg, rc):
        if axis.name not in ("hidden", "ffn", "expert_ffn", "shared_ffn"):
            continue
        full = axis.choices[0]
        multiple = width_multiple(full, rc)
        assert multiple & (multiple - 1) == 0 and 1 <= multiple <= 128
        assert len(axis.choices) == rc.num_choices, (axis.name, axis.choices)  # alignment merged no candidates
        assert list(axis.choices) == sorted(set(axis.choices), reverse=True)
        assert all(w % multiple == 0 for w in axis.choices[1:]), (axis.name, multiple, axis.choices)
        exact = np.linspace(1.0, rc.min_fraction, rc.num_choices) * full
        assert np.all(np.abs(np.asarray(axis.choices) - exact) <= multiple / 2 + 1e-9)  # the nearest multiple
    small = {a.name: a.choices for a in build_axes(ej.load_config("small"), rc)}
    assert small["hidden"] == (512, 448, 416, 352, 288, 224, 192, 128)  # multiples of 32


def test_width_multiple_one_keeps_exact_fractions_and_bad_values_are_refused():
    axes = {a.name: a.choices for a in build_axes(ej.load_config("small"), RouterConfig(width_multiple=1))}
    assert axes["hidden"] == (512, 457, 402, 347, 293, 238, 183, 128)
    for bad in (0, -16, 2.5, True):
        with pytest.raises(ConfigError, match="router.width_multiple: must be a positive integer"):
            RouterConfig(width_multiple=bad)

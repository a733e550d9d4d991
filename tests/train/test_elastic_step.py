"""The joint elastic step: its gradient is the weighted sum of per-budget gradients; static slices; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.config import ConfigError
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.train.elastic_step import JointLossConfig, budget_losses, joint_loss
from elastic_jax.train.elastify import ElasticTrainConfig, load_parent

CFG = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=32"])


@pytest.fixture(scope="module")
def setup():
    router = Router(CFG, RouterConfig(budgets=(1.0, 0.7, 0.4)))
    model = ej.init_params(CFG, 1)
    params = {"model": model, "router": jax.tree.map(lambda x: 30 * x, router.init(jax.random.PRNGKey(2)))}
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(5, 200, (2, 24)), jnp.int32),
             "targets": jnp.asarray(rng.integers(5, 200, (2, 24)), jnp.int32),
             "loss_mask": jnp.asarray(rng.random((2, 24)) > 0.2, jnp.float32)}
    teacher = jax.tree.map(lambda x: x * 1.01, model)
    return router, params, teacher, batch


def test_joint_gradient_is_the_weighted_sum_of_budget_gradients(setup):
    router, params, teacher, batch = setup
    weights = (0.5, 0.3, 0.2)
    specs = (None, None, router.spec_for(params["router"], 0.4))  # one budget in static-slice mode
    lc = JointLossConfig(weights=weights, fixed_specs=specs, ce_weight=0.1)
    key, progress = jax.random.PRNGKey(7), jnp.asarray(0.3)
    joint = jax.jit(jax.grad(lambda p: joint_loss(CFG, router, lc, p, teacher, batch, key, progress)[0]))(params)
    teacher_logits = ej.apply(CFG, teacher, batch["inputs"])

    def single(p, i):
        return budget_losses(CFG, router, lc, p, teacher_logits, batch, key, progress)[0][i]

    separate = jax.jit(lambda p: [jax.grad(lambda q, i=i: single(q, i))(p) for i in range(3)])(params)
    expected = jax.tree.map(lambda *g: sum(w * x for w, x in zip(weights, g)) / sum(weights), *separate)
    for a, b in zip(jax.tree.leaves(joint), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the static-slice budget reaches the parent's weights; gradients land only inside its prefix
    static_grad = separate[2]["model"]["layers_3"]["mixer"]["up_proj"]["kernel"]
    width = specs[2].width(CFG, "intermediate_size", 3)
    assert np.abs(np.asarray(static_grad)[:, :width]).sum() > 0
    assert np.abs(np.asarray(static_grad)[:, width:]).sum() == 0
    assert np.abs(np.asarray(static_grad)[specs[2].hidden(CFG):]).sum() == 0
    assert all(np.abs(np.asarray(g)).sum() == 0 for g in jax.tree.leaves(separate[2]["router"]))


def test_bad_elastic_config_values():
    with pytest.raises(ConfigError, match=r"elastic.router.budgets: every budget must be in \(0, 1\]"):
        ElasticTrainConfig.from_dict({"router": {"budgets": (1.0, -0.3)}})
    with pytest.raises(ConfigError, match=r"elastic.router.budgets: every budget must be in \(0, 1\]"):
        ElasticTrainConfig.from_dict({"router": {"budgets": (1.0, 1.4)}})
    with pytest.raises(ConfigError, match="duplicated"):
        ElasticTrainConfig.from_dict({"router": {"budgets": (1.0, 0.5, 0.5)}, "stage2_weights": None})
    with pytest.raises(ConfigError, match="elastic.stage2_weights: one weight per budget"):
        ElasticTrainConfig.from_dict({"router": {"budgets": (1.0, 0.5)}, "stage2_weights": (0.5, 0.3, 0.2)})
    with pytest.raises(ConfigError, match="unknown field 'elastic.budget'"):
        ElasticTrainConfig.from_dict({"budget": (1.0,)})
    with pytest.raises(ConfigError, match="elastic.router.width_multiple: must be a positive integer"):
        ElasticTrainConfig.from_dict({"router": {"width_multiple": 0}})
    with pytest.raises(ElasticError, match="weights"):
        JointLossConfig(weights=(1.0, -1.0), fixed_specs=(None, None))


def test_parent_of_another_config_is_refused(tmp_path):
    other = CFG.replace(hidden_size=48)
    ej.to_hf(other, ej.init_params(other, 0), tmp_path)
    with pytest.raises(ConfigError, match=r"does not match.*hidden_size"):
        load_parent(tmp_path, CFG)

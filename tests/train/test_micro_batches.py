"""Gradient accumulation over micro-batches gives the whole batch's step: the pretraining step and the joint
elastic loss (masked and sliced students, router resource term), values and gradients; the joint loss also with
every forward pass rematerialised and its repeated layers scanned."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax import distributed
from elastic_jax.config import ConfigError
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.experiment import load_config
from elastic_jax.model.layer_groups import LayerExecution
from elastic_jax.train import TrainConfig, TrainState, make_optimizer, make_train_step
from elastic_jax.train.elastic_step import JointLossConfig, joint_loss
from elastic_jax.train.loop import global_batch_sharding
from elastic_jax.train.micro_batches import split_rows, value_and_grad_accumulated

CFG = load_config("tiny").replace(pattern="*E*E", hidden_size=32)  # "*E" twice: one scanned pair


def _close(a, b, tol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    mask = rng.random((4, 16)) > 0.3
    mask[1, :12] = False  # micro-batches with different token counts: the weights must follow them
    return {"inputs": jnp.asarray(rng.integers(5, 200, (4, 16)), jnp.int32),
            "targets": jnp.asarray(rng.integers(5, 200, (4, 16)), jnp.int32),
            "loss_mask": jnp.asarray(mask, jnp.float32)}


def test_rows_are_dealt_round_robin(batch):
    parts = split_rows(batch, 2)
    assert parts["inputs"].shape == (2, 2, 16)
    np.testing.assert_array_equal(parts["inputs"][0], batch["inputs"][0::2])
    np.testing.assert_array_equal(parts["inputs"][1], batch["inputs"][1::2])


def test_pretraining_step_with_micro_batches_equals_one_pass(batch):
    train = TrainConfig(lr=1e-2, warmup_steps=1, total_steps=5)
    params = ej.init_params(CFG, 0)
    optimizer, schedule = make_optimizer(train, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
    outs = [make_train_step(CFG, optimizer, schedule, donate=False, micro_batches=k)[0](state, batch)
            for k in (1, 4)]  # four micro-batches: one row each
    for new_state, metrics in outs[1:]:
        _close(metrics, outs[0][1])
        _close(new_state.params, outs[0][0].params)


def test_joint_loss_with_micro_batches_equals_one_pass(batch):
    router = Router(CFG, RouterConfig(budgets=(1.0, 0.4)))  # a masked student and a static slice
    params = {"model": ej.init_params(CFG, 1), "router": router.init(jax.random.PRNGKey(2))}
    teacher = jax.tree.map(lambda x: x * 1.01, params["model"])
    lc = JointLossConfig(weights=(1.0, 1.0), ce_weight=0.1, fixed_specs=(None, router.spec_for(params["router"], 0.4)))
    key, progress = jax.random.PRNGKey(7), jnp.asarray(0.3)

    def loss(lc):
        return lambda p, b: joint_loss(CFG, router, lc, p, teacher, b, key, progress)

    want = jax.jit(lambda p: value_and_grad_accumulated(loss(lc), p, batch, 1))(params)
    scanned = dataclasses.replace(lc, execution=LayerExecution(remat="block", scan_layers=True))
    got = jax.jit(lambda p: value_and_grad_accumulated(loss(scanned), p, batch, 2))(params)
    _close(got, want, tol=2e-5)  # gradients of order 10-100, summed in another order


def test_micro_batches_that_do_not_split_the_rows_are_refused():
    mesh = distributed.make_mesh({"data": 1}, jax.devices()[:1])
    with pytest.raises(ConfigError, match=r"train.micro_batches: 3 micro-batches do not split train.global_batch=4"):
        global_batch_sharding(dataclasses.replace(TrainConfig(global_batch=4), micro_batches=3), mesh)
    with pytest.raises(ConfigError, match="micro_batches"):
        TrainConfig(micro_batches=0)

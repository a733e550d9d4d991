"""Optimizer, losses and the jitted train step on a small attention + MoE model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.experiment import load_config
from elastic_jax.model.functional import param_shapes
from elastic_jax.train import (
    TrainConfig,
    TrainState,
    cross_entropy,
    kl_forward,
    learning_rate_schedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
    param_labels,
)

CFG = load_config("tiny").replace(pattern="*E")  # no Mamba layer: compiles in a few seconds
TRAIN = TrainConfig(lr=1e-2, warmup_steps=2, total_steps=20, weight_decay=0.1)


def test_schedule_warms_up_then_decays_to_min():
    schedule = learning_rate_schedule(TrainConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1))
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.55, abs=1e-6)
    assert float(schedule(110)) == pytest.approx(0.1)
    longer = learning_rate_schedule(TrainConfig(lr=1.0, warmup_steps=10, total_steps=20, schedule_steps=110))
    assert float(longer(60)) == pytest.approx(0.55, abs=1e-6)


def test_weight_decay_and_frozen_labels():
    labels = param_labels(param_shapes(CFG))
    assert labels["layers_1"]["mixer"]["e_score_correction_bias"] == "frozen"
    assert labels["layers_0"]["norm"]["weight"] == "no_decay" and labels["norm_f"]["weight"] == "no_decay"
    assert labels["layers_1"]["mixer"]["up_proj"] == "decay" and labels["embeddings"]["embedding"] == "decay"


def test_cross_entropy_is_the_masked_token_mean():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    targets = jnp.array([[1, 2, 3], [4, 0, 1]])
    mask = jnp.array([[1, 1, 0], [0, 1, 0]], jnp.float32)
    loss, tokens = jax.jit(cross_entropy)(logits, targets, mask)
    logp = jax.nn.log_softmax(logits)
    expected = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[1, 1, 0]) / 3
    assert float(tokens) == 3.0 and float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(cross_entropy(logits, targets, jnp.zeros_like(mask))[0]) == 0.0


def test_kl_forward():
    teacher = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 7))
    student = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 7))
    mask = jnp.ones((2, 4))
    kl = jax.jit(kl_forward, static_argnames="temperature")
    assert float(kl(teacher, teacher, mask)) == pytest.approx(0.0, abs=1e-6)
    value = float(kl(teacher, student, mask, temperature=2.0))
    pt, ps = jax.nn.softmax(teacher / 2.0), jax.nn.softmax(student / 2.0)
    assert value == pytest.approx(float(jnp.mean(jnp.sum(pt * (jnp.log(pt) - jnp.log(ps)), -1))), rel=1e-5)
    g_teacher, g_student = jax.jit(jax.grad(lambda t, s: kl_forward(t, s, mask), argnums=(0, 1)))(teacher, student)
    assert float(jnp.abs(g_teacher).max()) == 0.0 and float(jnp.abs(g_student).max()) > 0.0


def test_train_step_learns_counts_traces_and_keeps_routing_bias():
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32)), param_shapes(CFG))
    bias = np.asarray(params["layers_1"]["mixer"]["e_score_correction_bias"]) + 0.25
    params["layers_1"]["mixer"]["e_score_correction_bias"] = jnp.asarray(bias)
    optimizer, schedule = make_optimizer(TRAIN, params)
    state = TrainState.create(params, optimizer)
    step, counter = make_train_step(CFG, optimizer, schedule)
    tokens = rng.integers(5, 40, (4, 17)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((4, 16), np.float32)}
    first = None
    for _ in range(8):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first - 0.1
    assert counter.count == 1 and int(state.step) == 8
    assert float(metrics["tokens"]) == 64.0 and float(metrics["lr"]) == pytest.approx(float(schedule(7)))
    np.testing.assert_array_equal(np.asarray(state.params["layers_1"]["mixer"]["e_score_correction_bias"]), bias)
    eval_fn, eval_counter = make_eval_step(CFG)
    out = eval_fn(state.params, batch)
    assert float(out["loss"]) < first and eval_counter.count == 1
    state, _ = step(state, {k: v[:2] for k, v in batch.items()})  # a new batch shape is a new trace
    assert counter.count == 2

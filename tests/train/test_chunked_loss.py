"""Logits formed a sequence chunk at a time (train/losses.py head_losses) give the full-logits losses and
gradients: for the losses themselves, the joint elastic loss (mask and static students) and the pretraining loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.model.functional import build
from elastic_jax.train.elastic_step import JointLossConfig, joint_loss
from elastic_jax.train.losses import Head, auto_chunk, cross_entropy, head_losses, head_of, kl_forward
from elastic_jax.train.step import _loss_fn

CFG = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=32"])
LENGTH = 24


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {"inputs": jnp.asarray(rng.integers(5, 200, (2, LENGTH)), jnp.int32),
            "targets": jnp.asarray(rng.integers(5, 200, (2, LENGTH)), jnp.int32),
            "loss_mask": jnp.asarray(rng.random((2, LENGTH)) > 0.2, jnp.float32)}


def test_head_losses_equal_full_logits_losses_and_gradients(batch):
    rng = np.random.default_rng(1)
    x = [jnp.asarray(rng.normal(size=(2, LENGTH, 16)), jnp.float32) for _ in range(3)]
    w = [jnp.asarray(rng.normal(size=(16, 40)), jnp.float32) for _ in range(3)]
    targets = batch["targets"] % 40
    mask = batch["loss_mask"]

    def full(x, w):
        t = x[0] @ w[0]
        kd = [kl_forward(t, xs @ ws, mask, 2.0) for xs, ws in zip(x[1:], w[1:])]
        ce = [cross_entropy(xs @ ws, targets, mask)[0] for xs, ws in zip(x[1:], w[1:])]
        return sum(kd) + 0.5 * sum(ce), (kd, ce, mask.sum())

    def chunked(x, w, chunk):
        heads = [Head(xs, ws, jnp.float32) for xs, ws in zip(x, w)]
        kd, ce, tokens = head_losses(heads[0], heads[1:], targets, mask, temperature=2.0, chunk=chunk)
        return sum(kd) + 0.5 * sum(ce), (kd, ce, tokens)

    (want, want_terms), want_grads = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(x, w)
    for chunk in (4, LENGTH):  # six chunks, one
        (got, terms), grads = jax.jit(jax.value_and_grad(lambda x, w, c=chunk: chunked(x, w, c), argnums=(0, 1),
                                                         has_aux=True))(x, w)
        _close((got, terms), (want, want_terms))
        _close(grads, want_grads)
        assert float(jnp.abs(grads[0][0]).sum()) == 0 and float(jnp.abs(grads[1][0]).sum()) == 0  # frozen teacher
    with pytest.raises(ValueError, match="divisor of the sequence length 24"):
        head_losses(None, [Head(x[1], w[1], jnp.float32)], targets, mask, chunk=5)


def test_joint_loss_in_chunks_equals_the_full_logits_loss(batch):
    """The elastic loss as computed before chunking: each student's full logits (masked parent or static slice)
    against the teacher's, forward KL + CE + resource term; values and gradients to 1e-6."""
    router = Router(CFG, RouterConfig(budgets=(1.0, 0.7, 0.4)))
    model = ej.init_params(CFG, 1)
    params = {"model": model, "router": jax.tree.map(lambda x: 30 * x, router.init(jax.random.PRNGKey(2)))}
    teacher = jax.tree.map(lambda x: x * 1.01, model)
    specs = (None, None, router.spec_for(params["router"], 0.4))
    key, progress = jax.random.PRNGKey(7), jnp.asarray(0.3)

    def reference(p):
        t_logits = ej.apply(CFG, teacher, batch["inputs"])
        total, keys = 0.0, jax.random.split(key, 3)
        for i, spec in enumerate(specs):
            if spec is None:
                masks, resource, _, _ = router.sample(p["router"], i, keys[i], progress)
                logits = build(CFG).apply({"params": p["model"]}, batch["inputs"], masks=masks)[0]
            else:
                sub, sub_cfg = slice_params(p["model"], CFG, spec)
                logits, resource = build(sub_cfg).apply({"params": sub}, batch["inputs"])[0], 0.0
            loss = kl_forward(t_logits, logits, batch["loss_mask"], 1.5) + resource
            total = total + (loss + 0.1 * cross_entropy(logits, batch["targets"], batch["loss_mask"])[0]) / 3
        return total

    want, want_grads = jax.jit(jax.value_and_grad(reference))(params)
    lc = JointLossConfig(weights=(1.0, 1.0, 1.0), fixed_specs=specs, ce_weight=0.1, kd_temperature=1.5,
                         loss_chunk=4)  # six chunks (the one-chunk path: tests/train/test_elastic_step.py)
    got, grads = jax.jit(jax.value_and_grad(
        lambda p: joint_loss(CFG, router, lc, p, teacher, batch, key, progress)[0]))(params)
    _close(got, want)
    _close(grads, want_grads)


def test_pretraining_loss_in_chunks_equals_cross_entropy(batch):
    model, params = build(CFG), ej.init_params(CFG, 3)
    want, want_grads = jax.value_and_grad(
        lambda p: cross_entropy(ej.apply(CFG, p, batch["inputs"]), batch["targets"], batch["loss_mask"])[0])(params)
    got, grads = jax.jit(jax.value_and_grad(lambda p: _loss_fn(model, p, batch, chunk=3)[0]))(params)
    _close(got, want)
    _close(grads, want_grads)
    head = head_of(model, params, batch["inputs"])  # the read-out's input: [rows, length, hidden]
    assert head.x.shape == (2, LENGTH, CFG.hidden_size) and head.kernel.shape == (CFG.hidden_size, CFG.vocab_size)


def test_automatic_chunk_bounds_one_chunk_of_logits():
    # Nano's vocabulary, 8 rows per device: 4 MiB of fp32 logits per position -> 128 positions in 512 MiB
    assert auto_chunk(8, 1024, 131072) == 128
    assert auto_chunk(8, 1024, 131072, limit=8 * 131072 * 4 * 1024) == 1024
    assert auto_chunk(64, 1024, 131072, limit=1) == 1

"""Token losses: masked cross-entropy for pretraining and forward KL for distillation (fp32 log-softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean loss over masked tokens, number of masked tokens) for logits [b, L, V] and int targets [b, L]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    tokens = mask.sum()
    return (nll * mask).sum() / jnp.maximum(tokens, 1.0), tokens


def kl_forward(teacher_logits: jax.Array, student_logits: jax.Array, mask: jax.Array,
               temperature: float = 1.0) -> jax.Array:
    """Mean over masked tokens of KL(teacher || student) of the temperature-softened distributions.

    Forward KL makes the student cover the teacher's mass; the teacher receives no gradient. The value is
    not rescaled by temperature**2 (do that at the call site if wanted).
    """
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    log_pt = jax.nn.log_softmax(t, axis=-1)
    log_ps = jax.nn.log_softmax(s, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    mask = mask.astype(jnp.float32)
    return (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)

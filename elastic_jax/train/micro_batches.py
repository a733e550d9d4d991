"""Gradient accumulation: one optimizer step over `train.micro_batches` slices of the global batch.

Each micro-batch's loss is a mean over its own masked tokens; weighted by its share of the batch's masked tokens
and summed, the losses, metrics and gradients are those of the whole batch in one pass (the distillation and
cross-entropy terms are token means, and the terms that do not depend on the rows, such as the router's resource
loss, are the same in every micro-batch and sum back to themselves). Only one micro-batch's activations are alive
at a time, which is what makes a large global batch fit (`elastic-jax plan` reports the count it needs).

Micro-batch i holds rows i, i + k, i + 2k, ...: with rows split over devices in contiguous blocks, every device
keeps its own rows, so a micro-batch is split like the batch it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


class MicroBatchError(ValueError):
    """A micro-batch count that does not split the batch rows evenly (per device)."""


def check_micro_batches(micro_batches: int, global_batch: int, batch_shards: int = 1) -> None:
    """Raise MicroBatchError unless every device's rows split into `micro_batches` equal parts."""
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise MicroBatchError(f"train.micro_batches: must be an integer >= 1, got {micro_batches!r}")
    if global_batch % (micro_batches * batch_shards):
        raise MicroBatchError(f"train.micro_batches: {micro_batches} micro-batches do not split train.global_batch="
                              f"{global_batch} evenly over {batch_shards} batch shard(s); use a divisor of "
                              f"{global_batch // batch_shards if global_batch % batch_shards == 0 else global_batch}")


def split_rows(batch: Batch, micro_batches: int) -> Batch:
    """[B, ...] arrays -> [k, B / k, ...], micro-batch i holding rows i, i + k, ..."""
    def split(a):
        return a.reshape(a.shape[0] // micro_batches, micro_batches, *a.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def value_and_grad_accumulated(loss_fn: Callable[[Any, Batch], tuple[jax.Array, dict]], params: Any, batch: Batch,
                               micro_batches: int) -> tuple[tuple[jax.Array, dict], Any]:
    """((loss, metrics), grads) of `loss_fn(params, batch)`, a token mean over batch["loss_mask"], computed one
    micro-batch at a time (a scan) and weighted by each micro-batch's share of the masked tokens."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch)
    parts = split_rows(batch, micro_batches)
    total = jnp.maximum(batch["loss_mask"].astype(jnp.float32).sum(), 1.0)
    first = jax.tree.map(lambda a: a[0], parts)
    shapes = jax.eval_shape(grad_fn, params, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating)
                                             else s.dtype), shapes)

    def body(acc, micro):
        share = micro["loss_mask"].astype(jnp.float32).sum() / total
        out = grad_fn(params, micro)
        return jax.tree.map(lambda a, x: a + share * x.astype(a.dtype), acc, out), None

    acc, _ = jax.lax.scan(body, zeros, parts)
    return jax.tree.map(lambda a, s: a.astype(s.dtype), acc, shapes)

"""The jitted pretraining step (state donated) and the eval-loss step, with a count of how often each was traced.

A trace happens once per distinct input shape/sharding; counting traces inside the traced function is how
the loop reports (and tests bound) the number of compilations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from elastic_jax.config import ModelConfig
from elastic_jax.distributed import tracing_on
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.functional import build
from elastic_jax.model.layer_groups import PLAIN, LayerExecution
from elastic_jax.train.losses import head_losses, head_of, loss_chunk
from elastic_jax.train.micro_batches import value_and_grad_accumulated
from elastic_jax.train.state import TrainState

Batch = dict[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "loss_mask")
OPTIONAL_BATCH_KEYS = ("segment_ids",)  # packed documents (data.document_aware): the model masks across them


@dataclasses.dataclass
class TraceCounter:
    """Incremented by the traced Python function: one per trace (i.e. per compilation of a new signature)."""

    count: int = 0


def _loss_fn(model, params: Any, batch: Batch, mesh: Any = None, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """Masked cross-entropy with the logits formed a sequence chunk at a time (train/losses.py)."""
    head = head_of(model, params, batch["inputs"], segment_ids=batch.get("segment_ids"))
    chunk = loss_chunk(batch["loss_mask"].shape, head.kernel.shape[-1], mesh, chunk)
    _, (ce,), tokens = head_losses(None, [head], batch["targets"], batch["loss_mask"], chunk=chunk, mesh=mesh)
    return ce, tokens


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    *, state_sharding: Any = None, batch_sharding: NamedSharding | None = None,
                    donate: bool = True, loss_chunk_len: int = 0, execution: LayerExecution = PLAIN,
                    micro_batches: int = 1, target: CompileTarget | None = None
                    ) -> tuple[Callable[[TrainState, Batch], tuple[TrainState, dict]], TraceCounter]:
    """(step_fn, counter): step_fn(state, batch) -> (new state, metrics {loss, grad_norm, lr, tokens}).

    `batch` holds inputs/targets [b, L] int32 and loss_mask [b, L] (and segment_ids [b, L] int32 for packed
    documents); the loss is the mean over masked tokens of the whole global batch. With shardings given, the
    state keeps its layout across steps. `loss_chunk_len`: sequence positions per chunk of logits (0: automatic).
    `execution`: rematerialisation and the layer scan (model/layer_groups.py; the same values).
    `micro_batches`: gradients accumulated over that many slices of the batch (train/micro_batches.py).
    `target`: what the step is compiled for (kernels/target.py; None: this process's devices).
    """
    model = build(model_cfg, execution=execution, target=target)
    counter = TraceCounter()
    mesh = batch_sharding.mesh if batch_sharding is not None else None

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        counter.count += 1
        batch = batch_for_step(batch)
        with tracing_on(mesh):
            (loss, _), grads = value_and_grad_accumulated(
                lambda p, b: _loss_fn(model, p, b, mesh, loss_chunk_len), state.params, batch, micro_batches)
        tokens = batch["loss_mask"].astype(jnp.float32).sum()
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(schedule(state.step)),
                   "tokens": tokens}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None:
        batch_in = batch_sharding  # a prefix: every key of the batch is split by rows
        replicated = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec()) if batch_sharding else None
        kwargs.update(in_shardings=(state_sharding, batch_in), out_shardings=(state_sharding, replicated))
    return jax.jit(step_fn, **kwargs), counter


def make_eval_step(model_cfg: ModelConfig, *, param_sharding: Any = None,
                   batch_sharding: NamedSharding | None = None) -> tuple[Callable[[Any, Batch], dict], TraceCounter]:
    """(eval_fn, counter): eval_fn(params, batch) -> {loss, tokens} with the same masked cross-entropy."""
    model = build(model_cfg)
    counter = TraceCounter()
    mesh = batch_sharding.mesh if param_sharding is not None and batch_sharding is not None else None

    def eval_fn(params: Any, batch: Batch) -> dict[str, jax.Array]:
        counter.count += 1
        with tracing_on(mesh):
            loss, tokens = _loss_fn(model, params, batch_for_step(batch), mesh)
        return {"loss": loss, "tokens": tokens}

    kwargs: dict[str, Any] = {}
    if param_sharding is not None and batch_sharding is not None:
        kwargs["in_shardings"] = (param_sharding, batch_sharding)
    return jax.jit(eval_fn, **kwargs), counter


def batch_for_step(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys the steps read: BATCH_KEYS, and segment_ids when the batch has them (others stay on the host)."""
    return {k: batch[k] for k in (*BATCH_KEYS, *(k for k in OPTIONAL_BATCH_KEYS if k in batch))}

"""Distil one fixed architecture from a frozen teacher: the Minitron-style baseline of elastification.

Minitron compresses a parent one size at a time: prune it to the target shape (here: the prefix `spec` of the
importance-permuted parent, the same cut an elastic budget makes), then train that student alone with forward KL
from the parent's logits. `run_distill(experiment_config, workdir, teacher, spec)` does that with the pretraining
loop (`run_loop`: checkpoints, resume, stop signals, metrics.jsonl): the experiment's `train` section sets the
steps, batch, sequence length and optimiser, its `data` section the data, and `model` is the teacher's
architecture. The checkpoint holds the student as a plain model of the pruned shape (its metadata's `model`), so
every verb that reads a model reads it; `metadata["distill"]` records the spec it was cut with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax

from elastic_jax import distributed
from elastic_jax.checkpoint import Checkpointer
from elastic_jax.config import ModelConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model.functional import build
from elastic_jax.train.loop import (
    DataFeed,
    Layout,
    create_state,
    loop_settings,
    make_layout,
    parse_experiment,
    restore_sharded,
)
from elastic_jax.train.losses import kl_forward
from elastic_jax.train.metrics import MetricsWriter
from elastic_jax.train.run_loop import LoopTask, resume_settings, run_loop
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import TraceCounter, batch_for_step


def make_distill_step(teacher_cfg: ModelConfig, student_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                      schedule: optax.Schedule, temperature: float = 1.0, layout: Layout | None = None,
                      teacher_sharding: Any = None) -> tuple[Callable[..., tuple[TrainState, dict]], TraceCounter]:
    """(step, counter): step(state, teacher_params, batch) -> (state, {loss, grad_norm, lr}); the loss is the
    forward KL from the teacher's logits (no gradient) to the student's, over the batch's loss mask."""
    teacher, student = build(teacher_cfg), build(student_cfg)
    counter = TraceCounter()

    def step(state: TrainState, teacher_params: dict, batch: dict) -> tuple[TrainState, dict]:
        counter.count += 1
        batch = batch_for_step(batch)
        segments = batch.get("segment_ids")
        target = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, batch["inputs"],
                                                     segment_ids=segments)[0])

        def loss_fn(params):
            logits = student.apply({"params": params}, batch["inputs"], segment_ids=segments)[0]
            return kl_forward(target, logits, batch["loss_mask"], temperature)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state), metrics

    kwargs: dict[str, Any] = {"donate_argnums": (0,)}
    if layout is not None and teacher_sharding is not None:  # the state keeps its layout from step to step
        replicated = jax.sharding.NamedSharding(layout.mesh, jax.sharding.PartitionSpec())
        kwargs.update(in_shardings=(layout.state_sharding, teacher_sharding, layout.batch_sharding),
                      out_shardings=(layout.state_sharding, replicated))
    return jax.jit(step, **kwargs), counter


def run_distill(experiment_config: ml_collections.ConfigDict, workdir: str | Path, teacher: dict,
                spec: ElasticSpec, temperature: float = 1.0) -> dict[str, Any]:
    """Prune `teacher` (host params of the experiment's model, already in importance order) to `spec` and distil
    it for train.total_steps in `workdir`, resuming from its newest checkpoint; returns the loop's figures."""
    run = parse_experiment(experiment_config)
    teacher_cfg = run.model
    spec.validate(teacher_cfg)
    student_host, student_cfg = slice_params(teacher, teacher_cfg, spec)
    student_run = dataclasses.replace(run, model=student_cfg)
    distributed.initialize()
    layout = make_layout(student_run)
    workdir = Path(workdir).absolute()
    ckpt = Checkpointer(workdir / "checkpoints", run.checkpoint)
    settings = resume_settings({"train": run.train.to_dict(), "data": run.data.to_dict()})
    metadata = {"model": student_cfg.to_dict(), "tokenizer": run.tokenizer.to_dict(), "experiment": run.experiment,
                "elastic": {}, "distill": {"spec": spec.to_dict(), "teacher_model": teacher_cfg.to_dict(),
                                           "kd_temperature": temperature},
                "run": {**settings, "distill.spec": str(spec.to_dict())}}
    try:
        found = restore_sharded(layout, ckpt, {"model": student_cfg.to_dict(), "run": metadata["run"]})
        if found is None:
            state = create_state(layout, lambda p: p, distributed.global_from_host(
                student_host, layout.state_sharding.params))
            start, data_states, resumed = 0, [], None
        else:
            start, state, data_states, _ = found
            resumed = start
        teacher_sharding = distributed.param_shardings(teacher, layout.mesh)
        teacher_params = distributed.global_from_host(teacher, teacher_sharding)
        feed = DataFeed(student_run, layout, data_states)
        step, counter = make_distill_step(teacher_cfg, student_cfg, layout.optimizer, layout.schedule, temperature,
                                          layout, teacher_sharding)
        task = LoopTask(name="distill", total_steps=run.train.total_steps,
                        step=lambda state, index: step(state, teacher_params, feed.next()),
                        data_state=feed.state, metadata=lambda state: metadata,
                        tokens=lambda index: run.train.global_batch * run.train.seq_len,
                        compilations=lambda: counter.count)
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, start_step=start)
        try:
            state, result = run_loop(task, state, start=start, resumed_from=resumed, ckpt=ckpt, writer=writer,
                                     settings=loop_settings(run))
        finally:
            writer.close()
    finally:
        ckpt.close()
    return result

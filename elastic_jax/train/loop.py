"""The pretraining loop: validate everything, resume from the newest good checkpoint, train, evaluate, save.

`run_pretrain(experiment_config, workdir)` is what `elastic-jax pretrain` and `python -m elastic_jax.train`
call. All user errors (bad config, missing data, sequence too long, checkpoint of another model) are raised
before the first compilation. The loop itself is `run_loop.run_loop`: SIGTERM or Ctrl-C saves a checkpoint at the
current step and returns normally.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from elastic_jax import distributed
from elastic_jax.checkpoint import CheckpointConfig, Checkpointer
from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.data import DataConfig, Tokenizer, eval_prompts, load_tokenizer, make_eval_batches, make_train_iterator
from elastic_jax.experiment import ExperimentConfig, TrainConfig
from elastic_jax.model.functional import build
from elastic_jax.train.capacity import check_fits_locally
from elastic_jax.train.evaluation import eval_loss, reasoning_accuracy
from elastic_jax.train.metrics import MetricsWriter
from elastic_jax.train.micro_batches import MicroBatchError, check_micro_batches
from elastic_jax.train.optim import make_optimizer
from elastic_jax.train.run_loop import LoopSettings, LoopTask, resume_settings, run_loop
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import batch_for_step, make_eval_step, make_train_step

log = logging.getLogger("elastic_jax.train")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The validated sections of an experiment config."""

    model: ModelConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    data: DataConfig
    mesh: dict[str, int]
    tokenizer: Tokenizer
    experiment: dict[str, Any]


def json_safe(obj: Any) -> Any:
    """A JSON-serialisable copy (tuples become lists, non-finite floats strings)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def parse_experiment(config: ml_collections.ConfigDict | dict) -> RunSpec:
    """Validate every section (model, train, checkpoint, data, mesh) without touching a device."""
    tree = ExperimentConfig.from_dict(config)  # every section, validated (elastic_jax/experiment.py)
    model, train, ckpt = tree.model, tree.train, tree.checkpoint
    try:
        data = tree.data.validate()
        tokenizer = load_tokenizer(data.tokenizer)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(str(err)) from err
    train.check_model(model)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(f"model.vocab_size: {model.vocab_size} is smaller than the tokenizer's vocabulary "
                          f"({tokenizer.vocab_size} ids, data.tokenizer={data.tokenizer!r})")
    mesh = tree.mesh.to_dict()
    experiment = json_safe(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    return RunSpec(model, train, ckpt, data, mesh, tokenizer, experiment)


@dataclasses.dataclass
class Layout:
    """Mesh, optimizer and the shardings of the train state and batches."""

    mesh: jax.sharding.Mesh
    optimizer: Any
    schedule: Any
    abstract: TrainState
    state_sharding: TrainState
    batch_sharding: NamedSharding


def state_layout(mesh: jax.sharding.Mesh, abstract_params: Any, params_sharding: Any,
                 optimizer: Any) -> tuple[TrainState, TrainState]:
    """(abstract train state, its shardings): optimizer moments follow their parameters, the step is replicated."""
    abstract = jax.eval_shape(lambda p: TrainState.create(p, optimizer), abstract_params)
    opt_sh = distributed.tree_shardings_like(abstract.opt_state, abstract.params, params_sharding, mesh)
    return abstract, TrainState(step=NamedSharding(mesh, PartitionSpec()), params=params_sharding, opt_state=opt_sh)


def global_batch_sharding(train: TrainConfig, mesh: jax.sharding.Mesh) -> NamedSharding:
    """Rows of the global batch split over data x fsdp; a clear error when they cannot be split evenly."""
    data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if train.global_batch % data_shards or train.global_batch % jax.process_count():
        raise ConfigError(f"train.global_batch: {train.global_batch} rows cannot be split evenly over the "
                          f"mesh's data x fsdp = {data_shards} batch shards and {jax.process_count()} process(es)")
    try:
        check_micro_batches(train.micro_batches, train.global_batch, data_shards)
    except MicroBatchError as err:
        raise ConfigError(str(err)) from None
    return distributed.batch_sharding(mesh, global_batch=train.global_batch)


def make_layout(spec: RunSpec) -> Layout:
    """Build the mesh (clear error if it does not fit the devices) and shard the abstract train state."""
    mesh = distributed.make_mesh(spec.mesh)
    model = build(spec.model)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
    optimizer, schedule = make_optimizer(spec.train, abstract_params)
    abstract, state_sharding = state_layout(mesh, abstract_params, distributed.param_shardings(abstract_params, mesh),
                                            optimizer)
    return Layout(mesh, optimizer, schedule, abstract, state_sharding, global_batch_sharding(spec.train, mesh))


def create_state(layout: Layout, make_params: Any, *args: Any) -> TrainState:
    """TrainState.create(make_params(*args)), compiled so that every array is created in its sharding."""
    return jax.jit(lambda *a: TrainState.create(make_params(*a), layout.optimizer),
                   out_shardings=layout.state_sharding)(*args)


def init_state(spec: RunSpec, layout: Layout) -> TrainState:
    """Fresh parameters (seeded) and optimizer state, created directly in their shardings."""
    model = build(spec.model)
    return create_state(layout, lambda: model.init(jax.random.PRNGKey(spec.train.seed),
                                                   jnp.zeros((1, 1), jnp.int32))["params"])


def restore_sharded(layout: Layout, ckpt: Checkpointer, metadata: dict[str, Any] | None
                    ) -> tuple[int, TrainState, list[Any], dict[str, Any]] | None:
    """The newest readable checkpoint restored straight into the layout's shardings (any saved mesh), or None."""
    shardings = layout.state_sharding.to_tree()
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            layout.abstract.to_tree(), shardings)
    found = ckpt.restore_latest(abstract, metadata)
    if found is None:
        return None
    step, tree, data_states, meta = found
    log.info("resumed from checkpoint step %d in %s", step, ckpt.directory)
    return step, TrainState.from_tree(tree), data_states, meta


def restore_or_init(spec: RunSpec, layout: Layout, ckpt: Checkpointer,
                    metadata: dict[str, Any]) -> tuple[TrainState, list[Any], int | None]:
    """(state, saved data-iterator states, step resumed from or None)."""
    found = restore_sharded(layout, ckpt, metadata)
    if found is None:
        return init_state(spec, layout), [], None
    step, state, data_states, _ = found
    return state, data_states, step


class DataFeed:
    """This process's batches as global jax Arrays, and the iterator state to checkpoint."""

    def __init__(self, spec: RunSpec, layout: Layout, data_states: list[Any], *, seq_len: int | None = None,
                 seed: int | None = None):
        self.spec, self.sharding = spec, layout.batch_sharding
        self.global_mode = spec.train.data_loading == "global" or jax.process_count() == 1
        pi, pc = (0, 1) if self.global_mode else (jax.process_index(), jax.process_count())
        self.iterator = make_train_iterator(spec.data, spec.tokenizer, seq_len or spec.train.seq_len,
                                            spec.train.global_batch, spec.train.seed if seed is None else seed, pi, pc,
                                            max_seq_len=spec.model.max_position_embeddings)
        if data_states:
            if not self.global_mode and len(data_states) != pc:
                raise ConfigError(f"the checkpoint's data state was written by {len(data_states)} process(es), this "
                                  f"run has {pc}; resume with the same process count or train.data_loading='global'")
            try:
                self.iterator.set_state(data_states[0 if self.global_mode else pi])
            except ValueError as err:
                raise ConfigError(f"cannot resume the data pipeline: {err}") from err

    def to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        batch = batch_for_step(batch)
        if not self.global_mode:
            return distributed.global_batch_from_local(batch, self.sharding)
        return distributed.global_from_host(batch, self.sharding)

    def next(self) -> dict[str, jax.Array]:
        return self.to_global(next(self.iterator))

    def state(self) -> Any:
        return self.iterator.get_state()


@functools.lru_cache(maxsize=8)
def _replicate(mesh: jax.sharding.Mesh):
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))


def replicated(tree: Any) -> Any:
    """`tree` gathered onto every device of its mesh (generation wants whole weights); host arrays onto one."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return jax.tree.map(jnp.asarray, tree)
    return _replicate(sharding.mesh)(tree)


def evaluate(spec: RunSpec, params: Any, eval_fn: Any, eval_batches: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Eval loss on the held-out split and reasoning accuracy on the first N eval problems."""
    out: dict[str, float] = {}
    if eval_batches:
        out["eval/loss"] = eval_loss(eval_fn, params, eval_batches)
    if spec.train.eval_prompts > 0 and spec.data.reasoning_weight > 0:
        examples = eval_prompts(spec.train.eval_prompts, spec.data.reasoning)
        out["eval/accuracy"] = reasoning_accuracy(spec.model, replicated(params), examples, spec.tokenizer,
                                                  spec.train.eval_max_new_tokens)
    return out


def _eval_setup(spec: RunSpec, layout: Layout, feed: DataFeed) -> tuple[Any, list[dict[str, jax.Array]]]:
    if spec.train.eval_every <= 0 and spec.train.eval_batches <= 0:
        return None, []
    eval_fn, _ = make_eval_step(spec.model, param_sharding=layout.state_sharding.params,
                                batch_sharding=layout.batch_sharding)
    pi, pc = (0, 1) if feed.global_mode else (jax.process_index(), jax.process_count())
    batches = []
    if spec.train.eval_batches > 0:
        raw = make_eval_batches(spec.data, spec.tokenizer, spec.train.seq_len, spec.train.global_batch,
                                spec.train.eval_batches, pi, pc, max_seq_len=spec.model.max_position_embeddings)
        batches = [feed.to_global(b) for b in raw]
    return eval_fn, batches


def _metadata(spec: RunSpec) -> dict[str, Any]:
    return json.loads(json.dumps({"model": spec.model.to_dict(), "tokenizer": spec.tokenizer.to_dict(),
                                  "experiment": spec.experiment, "train": spec.train.to_dict(), "elastic": {},
                                  "run": resume_settings({"train": spec.train.to_dict(),
                                                          "data": spec.data.to_dict()})}))


def loop_settings(spec: RunSpec) -> LoopSettings:
    return LoopSettings(log_every=spec.train.log_every, checkpoint_every=spec.checkpoint.every_steps,
                        progress_bar=spec.train.progress_bar)


def run_pretrain(experiment_config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrain from an experiment config in `workdir` (resuming if it holds checkpoints); returns final figures."""
    spec = parse_experiment(experiment_config)
    distributed.initialize()
    check_fits_locally(spec.model, "pretrain")  # one line, before anything is compiled or allocated
    workdir_path = Path(workdir).absolute()
    workdir_path.mkdir(parents=True, exist_ok=True)
    layout = make_layout(spec)
    ckpt = Checkpointer(workdir_path / "checkpoints", spec.checkpoint)
    try:
        metadata = _metadata(spec)
        state, data_states, resumed = restore_or_init(spec, layout, ckpt, metadata)
        feed = DataFeed(spec, layout, data_states)
        start = int(jax.device_get(state.step))
        writer = MetricsWriter(workdir_path, enabled=jax.process_index() == 0, start_step=start)
        try:
            _, result = run_loop(pretrain_task(spec, layout, feed, metadata), state, start=start,
                                 resumed_from=resumed, ckpt=ckpt, writer=writer, settings=loop_settings(spec))
        finally:
            writer.close()
    finally:
        ckpt.close()
    return result


def pretrain_task(spec: RunSpec, layout: Layout, feed: DataFeed, metadata: dict[str, Any]) -> LoopTask:
    """Next-token cross-entropy on the experiment's data, evaluated every train.eval_every steps and at the end."""
    cfg = spec.train
    train_step, counter = make_train_step(spec.model, layout.optimizer, layout.schedule,
                                          state_sharding=layout.state_sharding, batch_sharding=layout.batch_sharding,
                                          execution=cfg.execution, micro_batches=cfg.micro_batches)
    eval_fn, eval_batches = _eval_setup(spec, layout, feed)
    evaluates = eval_fn is not None or cfg.eval_prompts > 0
    return LoopTask(
        name="pretrain", total_steps=cfg.total_steps,
        step=lambda state, index: train_step(state, feed.next()),
        data_state=feed.state, metadata=lambda state: metadata,
        tokens=lambda index: cfg.global_batch * cfg.seq_len, compilations=lambda: counter.count,
        evaluate=(lambda state: evaluate(spec, state.params, eval_fn, eval_batches)) if evaluates else None,
        eval_every=cfg.eval_every)

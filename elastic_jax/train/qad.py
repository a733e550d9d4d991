"""`elastic-jax qad`: quantisation-aware distillation of every budget of an elastic checkpoint at once, through the
one training loop (`run_loop.run_loop`: data, logging, checkpoints, stop signals, resume).

The student is the elastic checkpoint's parent, trained in float32 through fake-quantised weights (quant/qad.py);
the teacher is the same checkpoint, frozen and unquantised. Each budget keeps the architecture the checkpoint serves
for it (its metadata's `specs`), and the router is frozen: QAD changes weights, not architectures. Data, batch size,
sequence length (the elastification's stage 1) and tokenizer are the checkpoint's own experiment's; the learning
rate and the number of steps are QAD's (a short run at a small learning rate).

The output (`<workdir>/checkpoints`) is an elastic checkpoint like the input, plus a `qad` metadata section: every
inference verb reads it, and `--quant` (or `elastic-jax quantize`) quantises it by the same rules into the same
formats. `<workdir>/qad.json` holds, per budget, the held-out cross-entropy and the KL to the teacher of the
unquantised model, of post-training quantisation (the source checkpoint quantised) and of QAD.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from elastic_jax import distributed
from elastic_jax.checkpoint import Checkpointer, load_params
from elastic_jax.data import make_eval_batches
from elastic_jax.elastic.spec import ElasticError, ElasticSpec
from elastic_jax.experiment import ExperimentConfig
from elastic_jax.inference.engine import check_elastic_checkpoint
from elastic_jax.inference.load import is_quantized_checkpoint
from elastic_jax.quant.qad import check_format
from elastic_jax.train.elastic_step import make_elastic_optimizer
from elastic_jax.train.loop import (
    DataFeed,
    Layout,
    RunSpec,
    create_state,
    global_batch_sharding,
    parse_experiment,
    restore_sharded,
    state_layout,
)
from elastic_jax.train.metrics import MetricsWriter
from elastic_jax.train.qad_loss import TEACHERS, QADLoss, budget_figures, qad_loss
from elastic_jax.train.run_loop import LoopSettings, LoopTask, run_loop
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import TraceCounter

log = logging.getLogger("elastic_jax.qad")


@dataclasses.dataclass(frozen=True)
class QADSettings:
    """What `elastic-jax qad` takes besides the checkpoint: format, steps, peak learning rate (warmup over a tenth of
    the steps, cosine decay), teacher ("budget" or "parent"), held-out batches for the figures, checkpoint cadence
    (0: the source experiment's)."""

    fmt: str
    steps: int = 100
    lr: float = 1e-4
    teacher: str = "budget"
    eval_batches: int = 8
    checkpoint_every: int = 0

    def __post_init__(self):
        check_format(self.fmt)
        if self.teacher not in TEACHERS:
            raise ElasticError(f"--teacher: {self.teacher!r}; allowed: {list(TEACHERS)}")
        for name in ("steps", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ElasticError(f"--{name.replace('_', '-')}: must be an integer >= 1, got {value!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise ElasticError(f"--checkpoint-every: must be an integer >= 0, got {self.checkpoint_every!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise ElasticError(f"--lr: must be a finite number > 0, got {self.lr!r}")

    def run_settings(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint (all but the cadences)."""
        return {"fmt": self.fmt, "steps": self.steps, "lr": float(self.lr), "teacher": self.teacher}


@dataclasses.dataclass
class QADRun:
    spec: RunSpec
    loss: QADLoss
    layout: Layout
    teacher: dict
    state: TrainState
    feed: DataFeed
    start: int
    ckpt: Checkpointer
    metadata: dict[str, Any]
    eval_batches: list[dict[str, jax.Array]]
    seq_len: int


def _source(checkpoint: str | Path) -> dict[str, Any]:
    if is_quantized_checkpoint(checkpoint):
        raise ElasticError(f"qad: {checkpoint} is already quantised; pass the float elastic checkpoint it came from")
    meta = check_elastic_checkpoint(checkpoint)
    if "experiment" not in meta:
        raise ElasticError(f"qad: {checkpoint} records no experiment (data, batch); pass a checkpoint written by "
                           "`elastic-jax elastify`")
    return meta


def _spec(meta: dict[str, Any], settings: QADSettings) -> tuple[RunSpec, int]:
    """The source experiment with QAD's schedule; (spec, sequence length)."""
    spec = parse_experiment(meta["experiment"])
    ec = ExperimentConfig.from_dict(meta["experiment"]).require_elastic()
    train = dataclasses.replace(spec.train, total_steps=settings.steps, schedule_steps=0, lr=settings.lr,
                                warmup_steps=max(1, settings.steps // 10), eval_every=0, eval_prompts=0)
    ckpt = spec.checkpoint
    if settings.checkpoint_every:
        ckpt = dataclasses.replace(ckpt, every_steps=settings.checkpoint_every)
    return dataclasses.replace(spec, train=train, checkpoint=ckpt), ec.stage1_seq_len


def _layout(spec: RunSpec, params: dict) -> Layout:
    """The pretraining mesh for the state {"model", "router"}; the router's learning rate is 0 (frozen)."""
    mesh = distributed.make_mesh(spec.mesh)
    optimizer, schedule = make_elastic_optimizer(spec.train, router_lr_multiplier=0.0)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    replicated = NamedSharding(mesh, PartitionSpec())
    sharding = {"model": distributed.param_shardings(abstract["model"], mesh),
                "router": jax.tree.map(lambda _: replicated, abstract["router"])}
    abstract_state, state_sharding = state_layout(mesh, abstract, sharding, optimizer)
    return Layout(mesh, optimizer, schedule, abstract_state, state_sharding, global_batch_sharding(spec.train, mesh))


def prepare_qad(checkpoint: str | Path, workdir: str | Path, settings: QADSettings) -> QADRun:
    """Validate, place the frozen teacher and the student's state on the mesh (fresh, or the newest checkpoint in
    `workdir`), and open the data feed."""
    meta = _source(checkpoint)
    spec, seq_len = _spec(meta, settings)
    distributed.initialize()
    source = load_params(checkpoint)
    layout = _layout(spec, source)
    elastic = meta["elastic"]
    budgets = tuple(sorted((float(b) for b in elastic["specs"]), reverse=True))
    loss = QADLoss(settings.fmt, budgets, tuple(ElasticSpec.from_dict(elastic["specs"][f"{b:g}"]) for b in budgets),
                   tuple(1.0 for _ in budgets), settings.teacher,
                   float(elastic.get("train", {}).get("kd_temperature", 1.0)))
    run_settings = settings.run_settings()
    metadata = {k: v for k, v in meta.items() if k not in ("format", "run", "qad")}
    metadata.update(qad={**run_settings, "source": str(Path(checkpoint).absolute()), "seq_len": seq_len},
                    run=run_settings)
    workdir = Path(workdir).absolute()
    ckpt = Checkpointer(workdir / "checkpoints", spec.checkpoint)
    teacher = distributed.global_from_host(source["model"], layout.state_sharding.params["model"])
    try:
        found = restore_sharded(layout, ckpt, {"model": meta["model"], "run": run_settings})
    except Exception:
        ckpt.close()
        raise
    if found is None:  # the student starts as a copy of the teacher (the step donates the student's buffers)
        router = distributed.global_from_host(source["router"], layout.state_sharding.params["router"])
        state = create_state(layout, lambda t, r: {"model": jax.tree.map(jnp.copy, t), "router": r}, teacher, router)
        start, data_states = 0, []
    else:
        start, state, data_states, _ = found
    feed = DataFeed(spec, layout, data_states, seq_len=seq_len, seed=spec.train.seed + 29)
    raw = make_eval_batches(spec.data, spec.tokenizer, seq_len, spec.train.global_batch, settings.eval_batches, 0, 1,
                            max_seq_len=spec.model.max_position_embeddings)
    return QADRun(spec, loss, layout, teacher, state, feed, start, ckpt, metadata,
                  [{k: jnp.asarray(v) for k, v in b.items()} for b in raw], seq_len)


def make_qad_step(run: QADRun) -> tuple[Any, TraceCounter]:
    """step(state, teacher, batch) -> (state, metrics): the QAD loss of every budget, one optimizer update."""
    cfg, lc, layout = run.spec.model, run.loss, run.layout
    counter = TraceCounter()

    def step(state: TrainState, teacher: dict, batch: dict[str, jax.Array]):
        counter.count += 1
        (loss, metrics), grads = jax.value_and_grad(lambda p: qad_loss(cfg, lc, p["model"], teacher, batch),
                                                    has_aux=True)(state.params)
        updates, opt_state = layout.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads["model"]),
                   "lr": jnp.asarray(layout.schedule(state.step))}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(layout.mesh, PartitionSpec())
    return jax.jit(step, donate_argnums=(0,),
                   in_shardings=(layout.state_sharding, layout.state_sharding.params["model"], layout.batch_sharding),
                   out_shardings=(layout.state_sharding, replicated)), counter


class Figures:
    """Per-budget held-out cross-entropy and KL to the teacher, token-weighted over the evaluation batches."""

    def __init__(self, run: QADRun):
        self.run = run
        self.fn = jax.jit(lambda p, t, b, q: budget_figures(run.spec.model, run.loss, p, t, b, quantise=q),
                          static_argnums=(3,))

    def __call__(self, params: dict, quantise: bool) -> dict[str, float]:
        sums: dict[str, float] = {}
        tokens = 0.0
        for batch in self.run.eval_batches:
            out = jax.device_get(self.fn(params, self.run.teacher, batch, quantise))
            n = float(out.pop("tokens"))
            tokens += n
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
        return {k: v / max(tokens, 1.0) for k, v in sums.items()}


def qad_task(run: QADRun, figures: Figures) -> LoopTask:
    step, counter = make_qad_step(run)
    train = run.spec.train

    def evaluate(state: TrainState) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in figures(state.params["model"], True).items()}

    return LoopTask(name="qad", total_steps=train.total_steps,
                    step=lambda state, index: step(state, run.teacher, run.feed.next()),
                    data_state=run.feed.state, metadata=lambda state: run.metadata,
                    tokens=lambda index: train.global_batch * run.seq_len,
                    compilations=lambda: counter.count, evaluate=evaluate)


def comparison(run: QADRun, figures: Figures, trained: dict) -> list[dict[str, Any]]:
    """One row per budget: cross-entropy unquantised / post-training quantisation / QAD, and the KL to the
    teacher of both quantised students."""
    base = figures(run.teacher, False)
    ptq = figures(run.teacher, True)
    qad = figures(trained, True)
    return [{"budget": b, "format": run.loss.fmt, "teacher": run.loss.teacher, "loss": base[f"ce/{b:g}"],
             "ptq_loss": ptq[f"ce/{b:g}"], "qad_loss": qad[f"ce/{b:g}"], "ptq_kd": ptq[f"kd/{b:g}"],
             "qad_kd": qad[f"kd/{b:g}"]} for b in run.loss.budgets]


def run_qad(checkpoint: str | Path, workdir: str | Path, settings: QADSettings) -> dict[str, Any]:
    """QAD of `checkpoint` in `workdir` (resuming); the loop's figures plus `budgets` (the comparison rows, also in
    `<workdir>/qad.json`), or `stopped_at` when a stop signal ended it early."""
    run = prepare_qad(checkpoint, workdir, settings)
    workdir = Path(workdir).absolute()
    figures = Figures(run)
    settings_ = LoopSettings(log_every=run.spec.train.log_every, checkpoint_every=run.spec.checkpoint.every_steps,
                             progress_bar=run.spec.train.progress_bar)
    try:
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, start_step=run.start)
        try:
            state, result = run_loop(qad_task(run, figures), run.state, start=run.start,
                                     resumed_from=run.start or None, ckpt=run.ckpt, writer=writer,
                                     settings=settings_)
        finally:
            writer.close()
    finally:
        run.ckpt.close()
    if int(state.step) < settings.steps:
        return {**result, "stopped_at": int(state.step)}
    rows = comparison(run, figures, state.params["model"])
    if jax.process_index() == 0:
        (workdir / "qad.json").write_text(json.dumps(rows, indent=1))
    return {**result, "budgets": rows}


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The per-budget table `elastic-jax qad` prints."""
    fmt = rows[0]["format"]
    lines = [f"{'budget':>7} {'loss':>8} {fmt + ' PTQ':>10} {fmt + ' QAD':>10} {'KL PTQ':>8} {'KL QAD':>8}"]
    lines += [f"{r['budget']:>7g} {r['loss']:>8.4f} {r['ptq_loss']:>10.4f} {r['qad_loss']:>10.4f} "
              f"{r['ptq_kd']:>8.4f} {r['qad_kd']:>8.4f}" for r in rows]
    lines.append(f"held-out next-token cross-entropy; KL: to the unquantised {rows[0]['teacher']} (teacher)")
    return "\n".join(lines)


__all__ = ["QADSettings", "format_comparison", "prepare_qad", "run_qad"]

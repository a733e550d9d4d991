"""Elastification: rank and permute a parent, then train every budget and the router jointly; one checkpoint out.

`run_elastify(experiment_config, workdir, parent)` is what `elastic-jax elastify` calls. The experiment has the
pretraining sections (model, train, data, checkpoint) plus `elastic` (elastic/config.py). Stage 1 trains on
short sequences with uniform budget weights, stage 2 on longer ones with weights favouring the full model;
after `static_after` of the steps every budget's architecture is fixed to the router's argmax and trains as a
static prefix slice. The checkpoint's metadata carries the router config, budgets, the chosen spec per budget
and the importance ranking applied, so `elastic-jax slice` can cut any trained or in-between budget, and the
fixed architectures apart from the router's current choice, so a restart continues exactly. The loop itself
(data, logging, checkpoints, stop signals) is `run_loop.run_loop`, shared with pretraining.
It runs on the pretraining mesh (the experiment's `mesh` section): student and frozen teacher share the
parent's parameter shardings, the router is replicated and batches are split like pretraining's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from elastic_jax import distributed
from elastic_jax.checkpoint import Checkpointer, config_diff
from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.convert.hf import from_hf
from elastic_jax.data.calibration import calibration_batches
from elastic_jax.elastic.config import ElasticConfig
from elastic_jax.elastic.importance import random_ranking, run_importance
from elastic_jax.elastic.permute import permute_params, ranking_to_json
from elastic_jax.elastic.router import Router
from elastic_jax.elastic.search import router_free_specs
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.experiment import ExperimentConfig
from elastic_jax.model.functional import param_shapes
from elastic_jax.model_io import load_model, model_config_of, read_metadata
from elastic_jax.train.elastic_eval import evaluate_budgets
from elastic_jax.train.elastic_step import (
    JointLossConfig,
    StepCache,
    StepShardings,
    make_elastic_optimizer,
    sampled_weights,
    stage_weights,
)
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
from elastic_jax.train.run_loop import LoopSettings, LoopTask, resume_settings, run_loop
from elastic_jax.train.state import TrainState

log = logging.getLogger("elastic_jax.elastify")


ElasticTrainConfig = ElasticConfig  # the `elastic` section's schema lives in the config tree


def load_parent(path: str | Path, expected: ModelConfig, mesh: jax.sharding.Mesh | None = None
                ) -> tuple[dict, dict[str, Any]]:
    """Parent params (+ its metadata) from a Hugging Face directory or our checkpoint; the config must match.

    With `mesh`, a checkpoint is restored straight into the declared shardings on it (the teacher's), each process
    reading only its own devices' shards, and the config is checked before any tensor is read. A Hugging Face
    directory is read whole into host memory (`elastic-jax import-hf` converts one tensor at a time; elastify
    from its output to keep the parent off the hosts) and placed afterwards.
    """
    path = Path(path)
    hf = (path / "config.json").exists()
    if hf:
        cfg, params = from_hf(path)
        meta: dict[str, Any] = {}
    else:
        meta = read_metadata(path)
        cfg = model_config_of(path, meta)
    diff = config_diff(cfg.to_dict(), expected.to_dict())
    if diff:
        raise ConfigError(f"--parent {path}: its model config does not match the experiment's model section; "
                          "differing fields: " + "; ".join(diff))
    if hf:
        placed = params if mesh is None else distributed.global_from_host(params,
                                                                          distributed.param_shardings(params, mesh))
        return placed, meta
    _, params, _ = load_model(path, mesh=mesh)  # a run checkpoint's router comes replicated and is dropped
    return (params.get("model", params) if "router" in params else params), meta


def permuted_on_mesh(params: dict, cfg: ModelConfig, ranking: Any, shardings: Any) -> dict:
    """`permute_params` of sharded parameters, compiled once so that every process computes its own shards
    (no array is gathered on a host); the result is laid out as `shardings`."""
    return jax.jit(lambda p: permute_params(p, cfg, ranking), out_shardings=shardings)(params)


def permutes_parent(ec: ElasticTrainConfig, meta: dict) -> bool:
    """Whether the run permutes the parent it loads: a random order always, the importance order unless the
    parent came ranked (`elastic-jax importance`); never with `permute` off."""
    return ec.permute and (ec.importance_order == "random" or meta.get("elastic", {}).get("ranking") is None)


def rank_and_permute(spec: RunSpec, ec: ElasticTrainConfig, params: dict, meta: dict,
                     shardings: Any = None) -> tuple[dict, Any]:
    """Importance on calibration batches (or a random order seeded by train.seed), then permute so nested models
    are prefixes (skipped if done before). With `shardings`, `params` are sharded jax Arrays and the permuted
    parent comes out laid out by them (permuted_on_mesh)."""
    if not permutes_parent(ec, meta):
        return params, meta.get("elastic", {}).get("ranking")

    def permute(ranking):
        if shardings is None:
            return permute_params(params, spec.model, ranking)
        return permuted_on_mesh(params, spec.model, ranking, shardings)

    if ec.importance_order == "random":
        ranking = random_ranking(spec.model, spec.train.seed)
        log.info("permuted the parent in a random order (seed %d), not by importance", spec.train.seed)
        return permute(ranking), ranking_to_json(ranking)
    batches = _calibration(spec, ec, ec.importance_batches)
    _, ranking = run_importance(spec.model, params, batches)
    log.info("ranked and permuted the parent on %d calibration batches", len(batches))
    return permute(ranking), ranking_to_json(ranking)


def _calibration(spec: RunSpec, ec: ElasticTrainConfig, count: int) -> list:
    return calibration_batches(spec.data, spec.tokenizer, count, ec.stage1_seq_len,
                               spec.train.global_batch, max_seq_len=spec.model.max_position_embeddings)


def searched_specs(spec: RunSpec, ec: ElasticTrainConfig, teacher: dict) -> dict[float, ElasticSpec]:
    """`elastic.budget_search`: every budget fixed from the first step to the router-free search's choice on the
    ranked parent (the router then never trains)."""
    specs = router_free_specs(spec.model, teacher, ec.router, _calibration(spec, ec, max(ec.importance_batches, 1)),
                              seed=spec.train.seed)
    log.info("budget search (no router): %s", {b: s.to_dict() for b, s in specs.items()})
    return specs


def fix_step(ec: ElasticTrainConfig) -> int:
    """The step index from which every budget trains as a fixed static slice."""
    return round(ec.static_after * ec.total_steps)


def specs_to_json(specs: dict[float, ElasticSpec]) -> dict[str, Any]:
    return {f"{b:g}": s.to_dict() for b, s in specs.items()}


def specs_from_json(specs: dict[str, Any]) -> dict[float, ElasticSpec]:
    return {float(b): ElasticSpec.from_dict(s) for b, s in specs.items()}


def _metadata(spec: RunSpec, ec: ElasticTrainConfig, ranking: Any, current: dict[float, ElasticSpec],
              fixed: dict[float, ElasticSpec]) -> dict:
    """`specs`: each budget's architecture now (what `slice` cuts); `fixed_specs`: the architectures fixed for
    static-slice training ({} before `static_after`), which a resumed run must keep, not re-derive."""
    elastic = {"train": ec.to_dict(), "router": ec.router.to_dict(), "budgets": list(ec.budgets),
               "ranking": ranking, "specs": specs_to_json(current), "fixed_specs": specs_to_json(fixed)}
    return json.loads(json.dumps({"model": spec.model.to_dict(), "tokenizer": spec.tokenizer.to_dict(),
                                  "experiment": spec.experiment, "elastic": elastic, "run": _run_settings(spec, ec)}))


# Fields newer than some checkpoints, at the behaviour those had: left out of the run settings at that value, so
# such a run resumes; at another value (e.g. nested=True) its resume names the field instead.
LEGACY_RUN_VALUES = {"elastic.router.nested": False, "elastic.importance_order": "importance",
                     "elastic.budget_search": False, "elastic.budget_sampling": False,
                     "elastic.normalize_weights": True}


def _run_settings(spec: RunSpec, ec: ElasticTrainConfig) -> dict[str, Any]:
    flat = resume_settings({"train": spec.train.to_dict(), "data": spec.data.to_dict(), "elastic": ec.to_dict()})
    return {k: v for k, v in flat.items() if k not in LEGACY_RUN_VALUES or v != LEGACY_RUN_VALUES[k]}


class _Feeds:
    """One resumable global-batch feed per stage (their sequence lengths and seeds differ)."""

    def __init__(self, spec: RunSpec, ec: ElasticTrainConfig, layout: Layout, data_states: list[dict[str, Any]]):
        # a checkpoint holds one {stage: iterator state} per process
        self.feeds = {stage: DataFeed(spec, layout, [s[stage] for s in data_states], seq_len=seq_len,
                                      seed=spec.train.seed + i)
                      for i, (stage, seq_len) in enumerate((("1", ec.stage1_seq_len), ("2", ec.stage2_seq_len)))}

    def next(self, stage: int) -> dict[str, jax.Array]:
        return self.feeds[str(stage)].next()

    def state(self) -> dict[str, Any]:
        return {stage: feed.state() for stage, feed in self.feeds.items()}


def elastic_layout(spec: RunSpec, ec: ElasticTrainConfig, router: Router) -> Layout:
    """The pretraining mesh and shardings for the elastic state {"model", "router"}: the student's (and the
    teacher's) weights sharded like a parent's, the small router replicated."""
    mesh = distributed.make_mesh(spec.mesh)
    optimizer, schedule = make_elastic_optimizer(spec.train, ec.router.lr_multiplier)
    abstract = {"model": param_shapes(spec.model), "router": jax.eval_shape(router.init, jax.random.PRNGKey(0))}
    replicated = NamedSharding(mesh, PartitionSpec())
    params_sharding = {"model": distributed.param_shardings(abstract["model"], mesh),
                       "router": jax.tree.map(lambda _: replicated, abstract["router"])}
    abstract_state, state_sharding = state_layout(mesh, abstract, params_sharding, optimizer)
    return Layout(mesh, optimizer, schedule, abstract_state, state_sharding, global_batch_sharding(spec.train, mesh))


@dataclasses.dataclass
class ElasticRun:
    """An elastification ready to train: configs, mesh layout, and the state, teacher and data on the mesh."""

    spec: RunSpec
    ec: ElasticTrainConfig
    router: Router
    layout: Layout
    workdir: Path
    ckpt: Checkpointer
    state: TrainState
    teacher: dict
    feeds: _Feeds
    specs: dict[float, ElasticSpec]  # the fixed architectures ({} until static_after)
    start: int
    ranking: Any
    resumed_from: int | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)  # the loop's figures, after train_elastic


GPU_GEMM_FLAG = "--xla_gpu_enable_triton_gemm=false"


def gpu_gemm_advice(backend: str, xla_flags: str) -> str | None:
    """The advice to use cuBLAS GEMMs, on a GPU where XLA_FLAGS leaves the choice to XLA (docs/training.md)."""
    if backend != "gpu" or GPU_GEMM_FLAG.split("=")[0] in xla_flags:
        return None
    return (f"elastify on GPU: set XLA_FLAGS={GPU_GEMM_FLAG} before starting Python; XLA's Triton GEMM autotuning "
            "compiles every sliced student's matrix shapes and can take minutes per joint step")


def prepare_elastify(experiment_config: ml_collections.ConfigDict, workdir: str, parent: str,
                     searched: dict[float, ElasticSpec] | None = None) -> ElasticRun:
    """Validate, build the mesh, and place the frozen teacher (the ranked and permuted parent), the student's
    train state and the data feeds on it: fresh, or restored from the newest checkpoint in `workdir`. With
    `elastic.budget_search`, `searched` gives the search's result when an earlier run on the same parent, seed
    and calibration data computed it (the search is then not repeated)."""
    spec = parse_experiment(experiment_config)
    # train.total_steps is the elastic schedule's length (derived when the tree is parsed; never replaced here)
    ec = ExperimentConfig.from_dict(experiment_config).require_elastic()
    distributed.initialize()
    advice = gpu_gemm_advice(jax.default_backend(), os.environ.get("XLA_FLAGS", ""))
    if advice:
        log.warning(advice)
    router = Router(spec.model, ec.router)
    layout = elastic_layout(spec, ec, router)
    teacher_sharding = layout.state_sharding.params["model"]
    # the parent goes straight into the teacher's shardings: each process reads only its devices' shards
    parent_params, parent_meta = load_parent(parent, spec.model, layout.mesh)
    workdir_path = Path(workdir).absolute()
    ckpt = Checkpointer(workdir_path / "checkpoints", spec.checkpoint)
    found = restore_sharded(layout, ckpt, {"model": spec.model.to_dict(), "run": _run_settings(spec, ec)})
    if found is None:
        teacher, ranking = rank_and_permute(spec, ec, parent_params, parent_meta, teacher_sharding)
        # the student starts as a copy of the teacher (a copy: the step donates the student's buffers)
        state = create_state(layout, lambda t: {"model": jax.tree.map(jnp.copy, t),
                                                "router": router.init(jax.random.PRNGKey(spec.train.seed))}, teacher)
        specs = (searched or searched_specs(spec, ec, teacher)) if ec.budget_search else {}
        start, data_states, resumed = 0, [], None
    else:
        start, state, data_states, meta = found
        ranking = meta["elastic"]["ranking"]
        specs = _restored_fixed_specs(meta["elastic"], start, ec)
        # the stored ranking is the one this run applied, or the one a ranked parent came with (applied before)
        permuted = ranking is not None and permutes_parent(ec, parent_meta)
        teacher = permuted_on_mesh(parent_params, spec.model, ranking, teacher_sharding) if permuted else parent_params
        resumed = start
    feeds = _Feeds(spec, ec, layout, data_states)
    return ElasticRun(spec, ec, router, layout, workdir_path, ckpt, state, teacher, feeds, specs, start, ranking,
                      resumed)


def _restored_fixed_specs(elastic: dict[str, Any], start: int, ec: ElasticTrainConfig) -> dict[float, ElasticSpec]:
    """The fixed architectures of a checkpoint. Checkpoints from before `fixed_specs` was stored kept only
    `specs`, which were the fixed ones once past the fixing step and the router's passing choice before it."""
    if "fixed_specs" in elastic:
        return specs_from_json(elastic["fixed_specs"])
    return specs_from_json(elastic["specs"]) if start > fix_step(ec) else {}


def train_elastic(run: ElasticRun) -> StepCache:
    """Train from run.start to the last step (or a stop signal), checkpointing; updates run.state, run.specs and
    run.result. Returns the compiled steps (their count is the number of compilations)."""
    layout = run.layout
    steps = StepCache(run.spec.model, run.router, layout.optimizer, layout.schedule, run.ec.total_steps,
                      StepShardings(layout.state_sharding, layout.batch_sharding))
    settings = LoopSettings(log_every=run.spec.train.log_every, checkpoint_every=run.spec.checkpoint.every_steps,
                            progress_bar=run.spec.train.progress_bar)
    try:
        writer = MetricsWriter(run.workdir, enabled=jax.process_index() == 0, start_step=run.start)
        try:
            run.state, run.result = run_loop(elastify_task(run, steps), run.state, start=run.start,
                                             resumed_from=run.resumed_from, ckpt=run.ckpt, writer=writer,
                                             settings=settings)
        finally:
            writer.close()
    finally:
        run.ckpt.close()
    return steps


def run_elastify(experiment_config: ml_collections.ConfigDict, workdir: str, parent: str) -> dict[str, Any]:
    """Elastify `parent` as the experiment says, in `workdir` (resuming); returns the per-budget table and the
    loop's figures (`resumed_from`, `preempted`, `step`, ...); `stopped_at` instead of the table when stopped."""
    run = prepare_elastify(experiment_config, workdir, parent)
    steps = train_elastic(run)
    if int(run.state.step) < run.ec.total_steps:
        return {**run.result, "stopped_at": int(run.state.step)}
    table = evaluate_budgets(run.spec, run.ec, run.router, run.state.params, run.teacher, run.specs)
    if jax.process_index() == 0:
        (run.workdir / "budgets.json").write_text(json.dumps(table, indent=1))
    return {**run.result, "budgets": table, "compilations": steps.compilations}


def _fixed_specs(ec: ElasticTrainConfig, router: Router, state: TrainState, step: int,
                 specs: dict[float, ElasticSpec]) -> dict[float, ElasticSpec]:
    if specs or step < fix_step(ec):
        return specs
    fixed = {b: router.spec_for(state.params["router"], b) for b in ec.budgets}
    log.info("step %d: architectures fixed, static-slice mode: %s", step, {b: s.to_dict() for b, s in fixed.items()})
    return fixed


def elastify_task(run: ElasticRun, steps: StepCache) -> LoopTask:
    """The joint elastic step on the stage's feed; the architectures are fixed at `static_after` (run.specs)."""
    spec, ec, router = run.spec, run.ec, run.router
    key = jax.random.PRNGKey(spec.train.seed + 17)

    def stage_of(index: int) -> int:
        return 1 if index < ec.stage1_steps else 2

    def step(state: TrainState, index: int) -> tuple[TrainState, dict[str, Any]]:
        stage = stage_of(index)
        run.specs = _fixed_specs(ec, router, state, index, run.specs)
        weights = stage_weights(len(ec.budgets), ec.stage2_weights, stage)
        if ec.budget_sampling:  # one budget this step (Megatron's per-step sampling)
            weights = sampled_weights(weights, ec.budgets, spec.train.seed, index)
        lc = JointLossConfig(weights=weights, normalize=ec.normalize_weights,
                             fixed_specs=tuple(run.specs.get(b) for b in ec.budgets),
                             router_weight=ec.router.loss_weight,
                             ce_weight=ec.ce_weight, kd_temperature=ec.kd_temperature,
                             execution=spec.train.execution, micro_batches=spec.train.micro_batches)
        state, metrics = steps.get(lc)(state, run.teacher, run.feeds.next(stage), jax.random.fold_in(key, index))
        return state, {**metrics, "stage": stage}

    def metadata(state: TrainState) -> dict[str, Any]:
        current = run.specs or {b: router.spec_for(state.params["router"], b) for b in ec.budgets}
        return _metadata(spec, ec, run.ranking, current, run.specs)

    def tokens(index: int) -> int:
        return spec.train.global_batch * (ec.stage1_seq_len if stage_of(index) == 1 else ec.stage2_seq_len)

    return LoopTask(name="elastify", total_steps=ec.total_steps, step=step, data_state=run.feeds.state,
                    metadata=metadata, tokens=tokens, compilations=lambda: steps.compilations)

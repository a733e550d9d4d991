"""The joint elastic step: one jit that trains every budget and the router, distilling from the frozen parent.

teacher forward (once per batch) -> for each budget: router(budget) -> masks -> student forward up to the
lm_head -> every model's logits a sequence chunk at a time (train/losses.py: sharded by batch rows, never the
whole [B, L, V] at once) -> forward KL (+ optional CE) -> budget-weighted sum + lambda * resource loss -> grads
for the shared weights and the router -> optax with separate learning rates. A budget whose architecture is
fixed (`fixed_specs`) trains as a static prefix slice instead: its cost is that of the sliced model, and the
gradient lands in the parent's prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elastic_jax import distributed
from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router import Router
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError, ElasticSpec
from elastic_jax.experiment import TrainConfig
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.functional import build
from elastic_jax.model.layer_groups import PLAIN, LayerExecution
from elastic_jax.train.losses import Head, head_losses, head_of, loss_chunk
from elastic_jax.train.micro_batches import value_and_grad_accumulated
from elastic_jax.train.optim import learning_rate_schedule, param_labels
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import TraceCounter, batch_for_step

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class JointLossConfig:
    """Static settings of the joint loss (hashable: one compiled step per value)."""

    weights: tuple[float, ...]
    fixed_specs: tuple[ElasticSpec | None, ...]
    router_weight: float = 1.0
    ce_weight: float = 0.0
    kd_temperature: float = 1.0
    loss_chunk: int = 0  # sequence positions per chunk of logits; 0: automatic (losses.LOGITS_CHUNK_BYTES)
    execution: LayerExecution = PLAIN  # rematerialisation and the layer scan of every forward pass (same values)
    micro_batches: int = 1  # gradients accumulated over this many slices of the batch (train/micro_batches.py)
    target: CompileTarget | None = None  # what the step is compiled for (kernels/target.py; None: these devices)
    normalize: bool = True  # the weighted mean over budgets (False: the weighted sum; elastic.normalize_weights)

    def __post_init__(self):
        if isinstance(self.loss_chunk, bool) or not isinstance(self.loss_chunk, int) or self.loss_chunk < 0:
            raise ElasticError(f"loss_chunk must be a non-negative integer (0: automatic), got {self.loss_chunk!r}")
        if len(self.weights) != len(self.fixed_specs):
            raise ElasticError(f"weights ({len(self.weights)}) and fixed_specs ({len(self.fixed_specs)}) must have "
                               "one entry per budget")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ElasticError(f"elastic.weights must be non-negative with a positive sum, got {list(self.weights)}")


def make_elastic_optimizer(train: TrainConfig, router_lr_multiplier: float = 100.0
                           ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW for the shared weights (decay and freezing as in pretraining) and Adam at lr * multiplier for the
    router (METHOD §5-6), over params {"model": ..., "router": ...}."""
    schedule = learning_rate_schedule(train)

    def adamw(weight_decay: float) -> optax.GradientTransformation:
        return optax.adamw(schedule, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=weight_decay)

    def labels(params):
        return {"model": param_labels(params["model"]), "router": jax.tree.map(lambda _: "router", params["router"])}

    tx = optax.multi_transform({"decay": adamw(train.weight_decay), "no_decay": adamw(0.0),
                                "frozen": optax.set_to_zero(),
                                "router": optax.adam(lambda step: schedule(step) * router_lr_multiplier)}, labels)
    return (tx if train.clip_norm <= 0 else optax.chain(optax.clip_by_global_norm(train.clip_norm), tx)), schedule


def _student_head(cfg: ModelConfig, router: Router, params: dict, spec: ElasticSpec | None, index: int,
                  key: jax.Array, progress: jax.Array, inputs: jax.Array, mesh: Mesh | None,
                  segment_ids: jax.Array | None = None, execution: LayerExecution = PLAIN,
                  target: CompileTarget | None = None) -> tuple[Head, jax.Array, jax.Array]:
    """(read-out, resource loss, resource ratio) of one budget: a static slice when its architecture is fixed
    (no resource term), else the parent under the router's sampled masks."""
    if spec is not None:
        sub_params, sub_cfg = slice_params(params["model"], cfg, spec)
        if mesh is not None:  # lay the slice out as a parent of its size would be, not as padded parent shards
            sub_params = jax.lax.with_sharding_constraint(sub_params, distributed.param_shardings(sub_params, mesh))
        model = build(sub_cfg, execution=execution, target=target)
        return head_of(model, sub_params, inputs, segment_ids=segment_ids), jnp.zeros(()), jnp.asarray(-1.0)
    masks, resource, ratio, _ = router.sample(params["router"], index, key, progress)
    head = head_of(build(cfg, execution=execution, target=target), params["model"], inputs, masks=masks,
                   segment_ids=segment_ids)
    return head, resource, ratio


def budget_losses(cfg: ModelConfig, router: Router, lc: JointLossConfig, params: dict, teacher: Head | jax.Array,
                  batch: Batch, key: jax.Array, progress: jax.Array, mesh: Mesh | None = None
                  ) -> tuple[list[jax.Array], dict[str, jax.Array]]:
    """Per-budget loss terms (distillation + CE + lambda * resource) and their metrics. `teacher` is the
    teacher's read-out (or its logits); every student's logits are formed chunk by chunk next to the teacher's
    (losses.head_losses), never all at once."""
    keys = jax.random.split(key, len(lc.weights))
    live = [i for i, w in enumerate(lc.weights) if w != 0]  # a budget with no weight in this stage costs nothing
    heads, extras = [], []
    for i in live:
        budget = router.rc.budgets[i]
        with jax.named_scope(f"budget_{budget:g}"):  # each budget's ops carry its name in profiles
            head, resource, ratio = _student_head(cfg, router, params, lc.fixed_specs[i], i, keys[i], progress,
                                                  batch["inputs"], mesh, batch.get("segment_ids"), lc.execution,
                                                  lc.target)
        heads.append(head)
        extras.append((resource, ratio))
    chunk = loss_chunk(batch["loss_mask"].shape, cfg.vocab_size, mesh, lc.loss_chunk)
    kds, ces, _ = head_losses(teacher, heads, batch["targets"], batch["loss_mask"], temperature=lc.kd_temperature,
                              with_ce=bool(lc.ce_weight), chunk=chunk, mesh=mesh)
    losses, metrics = [jnp.zeros(())] * len(lc.weights), {}
    for j, i in enumerate(live):
        budget, (resource, ratio) = router.rc.budgets[i], extras[j]
        losses[i] = kds[j] + lc.router_weight * resource
        if lc.ce_weight:
            losses[i] = losses[i] + lc.ce_weight * ces[j]
            metrics[f"ce/{budget:g}"] = ces[j]
        metrics.update({f"kd/{budget:g}": kds[j], f"resource/{budget:g}": resource, f"ratio/{budget:g}": ratio})
    return losses, metrics


def joint_loss(cfg: ModelConfig, router: Router, lc: JointLossConfig, params: dict, teacher_params: dict,
               batch: Batch, key: jax.Array, progress: jax.Array, mesh: Mesh | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_b w_b * loss_b / sum_b w_b over budgets (without the division when not `lc.normalize`), with the
    teacher's forward pass computed once."""
    teacher_params = jax.lax.stop_gradient(teacher_params)
    teacher = head_of(build(cfg, execution=lc.execution, target=lc.target), teacher_params, batch["inputs"],
                      segment_ids=batch.get("segment_ids"))
    losses, metrics = budget_losses(cfg, router, lc, params, teacher, batch, key, progress, mesh)
    norm = sum(lc.weights) if lc.normalize else 1.0
    total = sum(w / norm * loss for w, loss in zip(lc.weights, losses))
    return total, metrics


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """Where the elastic step's inputs live: the train state, the frozen teacher (the student's model
    shardings) and the batch rows. The key and the metrics are replicated."""

    state: TrainState
    batch: NamedSharding

    def jit_kwargs(self) -> dict[str, Any]:
        replicated = NamedSharding(self.batch.mesh, PartitionSpec())
        return {"in_shardings": (self.state, self.state.params["model"], self.batch, replicated),
                "out_shardings": (self.state, replicated)}


def make_elastic_step(cfg: ModelConfig, router: Router, lc: JointLossConfig, optimizer: optax.GradientTransformation,
                      schedule: optax.Schedule, total_steps: int, shardings: StepShardings | None = None
                      ) -> tuple[Callable[..., tuple[TrainState, dict]], TraceCounter]:
    """(step, counter): step(state, teacher_params, batch, key) -> (state, metrics); state.params holds
    {"model", "router"}; the Gumbel schedule follows state.step / total_steps. With `shardings`, the state
    keeps its layout from step to step (static slices of sharded weights are resharded inside the program)."""
    counter = TraceCounter()
    mesh = shardings.batch.mesh if shardings else None

    def step(state: TrainState, teacher_params: dict, batch: Batch, key: jax.Array):
        counter.count += 1
        progress = state.step.astype(jnp.float32) / max(total_steps - 1, 1)
        batch = batch_for_step(batch)
        with distributed.tracing_on(mesh):
            (loss, metrics), grads = value_and_grad_accumulated(
                lambda p, b: joint_loss(cfg, router, lc, p, teacher_params, b, key, progress, mesh), state.params,
                batch, lc.micro_batches)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if all(spec is not None for spec in lc.fixed_specs):  # architectures fixed: the router stays put
            updates = {"model": updates["model"], "router": jax.tree.map(jnp.zeros_like, updates["router"])}
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads["model"]),
                   "lr": jnp.asarray(schedule(state.step))}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=(0,), **(shardings.jit_kwargs() if shardings else {})), counter


class StepCache:
    """Compiled elastic steps, one per static loss configuration (budget weights, fixed architectures), counted."""

    def __init__(self, cfg: ModelConfig, router: Router, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule, total_steps: int, shardings: StepShardings | None = None):
        self.cfg, self.router, self.optimizer, self.schedule, self.total_steps = cfg, router, optimizer, schedule, \
            total_steps
        self.shardings = shardings
        self._steps: dict[JointLossConfig, tuple[Callable, TraceCounter]] = {}

    def get(self, lc: JointLossConfig) -> Callable:
        if lc not in self._steps:
            self._steps[lc] = make_elastic_step(self.cfg, self.router, lc, self.optimizer, self.schedule,
                                                self.total_steps, self.shardings)
        return self._steps[lc][0]

    @property
    def compilations(self) -> int:
        return sum(counter.count for _, counter in self._steps.values())


def stage_weights(num_budgets: int, stage2: Sequence[float] | None, stage: int) -> tuple[float, ...]:
    """Uniform weights in stage 1; stage-2 weights (favouring the full model) afterwards."""
    if stage == 1 or stage2 is None:
        return tuple([1.0] * num_budgets)
    if len(stage2) != num_budgets:
        raise ElasticError(f"elastic.stage2_weights needs one weight per budget ({num_budgets}), got {list(stage2)}")
    return tuple(float(w) for w in stage2)


FULL_MODEL_PROBABILITY = 0.33  # Megatron's per-step budget sampling (METHOD §5)


def sampled_weights(weights: Sequence[float], budgets: Sequence[float], seed: int, index: int) -> tuple[float, ...]:
    """`elastic.budget_sampling`: one budget trains at step `index` (weight 1, the others 0): the full model with
    probability FULL_MODEL_PROBABILITY, else one of the others drawn by its weight. A function of (seed, index)
    alone, so a resumed run draws the same budgets."""
    rng = np.random.default_rng([seed, index])
    full = budgets.index(max(budgets))
    others = [i for i in range(len(budgets)) if i != full and weights[i] > 0]
    if not others or rng.random() < FULL_MODEL_PROBABILITY:
        pick = full
    else:
        p = np.array([weights[i] for i in others], dtype=np.float64)
        pick = others[int(rng.choice(len(others), p=p / p.sum()))]
    return tuple(1.0 if i == pick else 0.0 for i in range(len(budgets)))

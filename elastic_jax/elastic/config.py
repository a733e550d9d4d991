"""The `elastic` section of an experiment: the router (`elastic.router`), the two-stage schedule of the joint
training, its loss weights and the importance ranking done before it.

The schedule is the only source of an elastic run's length: `total_steps = stage1_steps + stage2_steps`
(the experiment derives `train.total_steps` from it; see experiment.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from elastic_jax import schema
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.schema import ConfigError, invalid

IMPORTANCE_ORDERS = ("importance", "random")  # the storage order nested models are prefixes of

# The flat layout of older configs and checkpoint metadata: elastic.<old> is now elastic.router.<new>.
LEGACY_ROUTER_FIELDS = {
    "budgets": "budgets", "metric": "metric", "axes": "axes", "num_choices": "num_choices",
    "min_fraction": "min_fraction", "width_multiple": "width_multiple", "heterogeneous": "heterogeneous",
    "tolerance": "tolerance", "router_hidden": "hidden_dim", "router_lr_multiplier": "lr_multiplier",
    "router_weight": "loss_weight",
}


@dataclasses.dataclass(frozen=True)
class ElasticConfig(schema.Section):
    """Budgets and router (`router`), the two-stage schedule and the joint loss of elastification.

    Stage 1 trains stage1_steps on stage1_seq_len tokens with uniform budget weights, stage 2 stage2_steps on
    stage2_seq_len with `stage2_weights` (one per budget; None: uniform). After `static_after` of the steps each
    budget's architecture is fixed to the router's argmax and trains as a static prefix slice. The loss is KD at
    `kd_temperature` (+ ce_weight * cross-entropy) + router.loss_weight * resource loss. Before training the
    parent is ranked on importance_batches calibration batches and permuted (`permute`); `importance_order`
    "random" permutes every axis in a random order seeded by train.seed instead (no calibration), the ablation of
    the importance ranking. `budget_search` fixes every budget's architecture from the first step to the
    router-free search's best zero-shot grid spec (elastic/search.py: the Minitron-style choice) instead of the
    router's, the ablation of the router. `budget_sampling` trains one budget per step instead of all of them
    (Megatron's reference: the full model with probability 0.33, else one of the others drawn by its stage weight);
    `normalize_weights` divides the joint loss by the sum of the stage's weights.
    """

    SECTION = "elastic"
    MOVED = {old: f"router.{new}" for old, new in LEGACY_ROUTER_FIELDS.items()}

    router: RouterConfig = dataclasses.field(default_factory=RouterConfig)
    stage1_steps: int = 100  #: steps of stage 1 (short sequences, uniform budget weights)
    stage2_steps: int = 50  #: steps of stage 2 (long sequences, stage2_weights)
    stage1_seq_len: int = 128  #: tokens per sequence in stage 1
    stage2_seq_len: int = 256  #: tokens per sequence in stage 2
    stage2_weights: tuple[float, ...] | None = (0.5, 0.3, 0.2)  #: loss weight per budget in stage 2 (None: uniform)
    static_after: float = 0.6  #: fraction of the steps after which each budget's architecture is fixed
    ce_weight: float = 0.0  #: weight of next-token cross-entropy beside the KD loss
    kd_temperature: float = 1.0  #: temperature of the forward-KL distillation
    importance_batches: int = 8  #: calibration batches of the importance ranking
    permute: bool = True  #: permute the parent into importance order before training
    importance_order: str = "importance"  #: "importance" (ranked) or "random" (seeded by train.seed: an ablation)
    budget_search: bool = False  #: fix every budget to the router-free search's choice from the start (an ablation)
    budget_sampling: bool = False  #: each step trains one budget: the full model w.p. 0.33, else one drawn by weight
    normalize_weights: bool = True  #: the joint loss is the weighted mean over budgets (False: the weighted sum)

    def __post_init__(self):
        if isinstance(self.router, dict):
            object.__setattr__(self, "router", RouterConfig.from_dict(self.router, "elastic.router"))
        if self.stage2_weights is not None:
            object.__setattr__(self, "stage2_weights", tuple(self.stage2_weights))
        for name in ("stage1_steps", "stage2_steps", "stage1_seq_len", "stage2_seq_len", "importance_batches"):
            value = getattr(self, name)
            low = 1 if name.endswith("seq_len") else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise invalid(self, name, f"must be an integer >= {low}, got {value!r}")
        if self.total_steps < 1:
            raise invalid(self, "stage1_steps", "stage1_steps + stage2_steps must be >= 1")
        if self.importance_order not in IMPORTANCE_ORDERS:
            raise invalid(self, "importance_order", f"must be one of {list(IMPORTANCE_ORDERS)}, got "
                          f"{self.importance_order!r}")
        if self.importance_order == "random" and not self.permute:
            raise invalid(self, "importance_order", "'random' permutes the parent; it needs permute=True")
        for name in ("budget_sampling", "normalize_weights"):
            if not isinstance(getattr(self, name), bool):
                raise invalid(self, name, f"must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.budget_search, bool):
            raise invalid(self, "budget_search", f"must be True (the router-free search's architectures) or False "
                          f"(the router's), got {self.budget_search!r}")
        if not 0.0 <= self.static_after <= 1.0:
            raise invalid(self, "static_after", f"must be in [0, 1], got {self.static_after}")
        if 1.0 not in self.budgets:
            raise invalid(self, "router.budgets", f"must include the full model 1.0, got {list(self.budgets)}")
        if self.stage2_weights is not None:
            if len(self.stage2_weights) != len(self.budgets):
                raise invalid(self, "stage2_weights", f"one weight per budget ({len(self.budgets)}: "
                              f"{list(self.budgets)}), got {list(self.stage2_weights)}")
            if any(w < 0 for w in self.stage2_weights) or sum(self.stage2_weights) <= 0:
                raise invalid(self, "stage2_weights", f"weights must be >= 0 with a positive sum, got "
                              f"{list(self.stage2_weights)}")
        for name in ("ce_weight", "kd_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if name == "kd_temperature" else value >= 0)):
                raise invalid(self, name, f"must be a finite number {'> 0' if name == 'kd_temperature' else '>= 0'}"
                              f", got {value!r}")

    @property
    def budgets(self) -> tuple[float, ...]:
        return self.router.budgets

    @property
    def metric(self) -> str:
        return self.router.metric

    @property
    def total_steps(self) -> int:
        """The length of the elastic run (and of its learning-rate schedule unless train.schedule_steps is set)."""
        return self.stage1_steps + self.stage2_steps

    @staticmethod
    def upgrade(data: dict[str, Any], path: str) -> dict[str, Any]:
        """Read the older flat layout (router settings directly under `elastic`, e.g. configs and checkpoint
        metadata written before elastic.router existed)."""
        old = [k for k in data if k in LEGACY_ROUTER_FIELDS]
        if not old:
            return data
        router = dict(schema.plain(data.get("router")))
        for key in old:
            new = LEGACY_ROUTER_FIELDS[key]
            if new in router:
                raise ConfigError(f"set twice: '{path}.{key}' (the older flat layout) and '{path}.router.{new}'; "
                                  f"keep only '{path}.router.{new}'", section=path)
            router[new] = data.pop(key)
        data["router"] = router
        return data

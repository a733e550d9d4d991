"""The router's settings (`elastic.router` of an experiment): budgets, routed axes, candidate grid, MLP width,
Gumbel temperature and logit-scale schedules, hard or soft masks, attention mode, loss weight and learning rate."""

from __future__ import annotations

import dataclasses
import math

from elastic_jax import schema
from elastic_jax.elastic.spec import ATTENTION_MODES, BUDGET_METRICS
from elastic_jax.schema import invalid

MAX_WIDTH_MULTIPLE = 128  # TPU lanes; also whole AVX-512 vectors and tensor-core tiles
ROUTER_AXES = ("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn")


@dataclasses.dataclass(frozen=True)
class RouterConfig(schema.Section):
    """Budgets (fractions of the parent under `metric`), axes, candidate grid and schedules of the router.

    budgets / metric / tolerance: the nested models trained, what a budget is a fraction of, and how far a
    budget's size may be from its target (none for the full model 1.0).
    axes, num_choices, min_fraction, width_multiple, heterogeneous: the candidate grid (router/candidates.py).
    nested: each budget may only choose, on every axis (and layer), widths at most the next larger budget's
    choice, so every budget is a slice of every larger one, not only of the parent (router/chain.py).
    hidden_dim: width of each axis's two-layer MLP.
    tau_start -> tau_end: Gumbel-softmax temperature, annealed exponentially over training.
    scale_start -> scale_end: factor on the standardised logits, raised linearly over training.
    hard: argmax masks with straight-through gradients (True) or soft masks sum_i pi_i * mask_i (False).
    attention_mode: "kv_groups" keeps whole KV groups, "query_heads" the same query heads in every group.
    loss_weight: lambda, the weight of the resource loss in the joint loss.
    lr_multiplier: the router's learning rate over the model's.
    """

    SECTION = "router"

    budgets: tuple[float, ...] = (1.0, 0.7, 0.4)  #: the nested models: fractions of the parent (with 1.0)
    metric: str = "total_params"  #: what a budget is a fraction of
    axes: tuple[str, ...] = ROUTER_AXES  #: the axes the router may shrink
    num_choices: int = 8  #: candidate widths per axis, parent's down to min_fraction
    min_fraction: float = 0.25  #: smallest candidate over the parent's width
    width_multiple: int | None = None  #: channel widths are multiples of this (None: auto)
    heterogeneous: bool = False  #: one choice per layer (True) or per axis (False)
    nested: bool = False  #: every budget's widths within the next larger budget's (a nested chain)
    hidden_dim: int = 128
    tau_start: float = 1.0
    tau_end: float = 0.05
    scale_start: float = 1.0
    scale_end: float = 10.0
    tolerance: float = 0.05  #: allowed relative gap of a budget to its target
    hard: bool = True
    attention_mode: str = "kv_groups"
    loss_weight: float = 1.0
    lr_multiplier: float = 100.0

    def __post_init__(self):
        budgets = tuple(float(b) for b in self.budgets)
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "axes", tuple(self.axes))
        if not budgets:
            raise invalid(self, "budgets", "at least one budget is needed")
        for b in budgets:
            if not 0.0 < b <= 1.0:
                raise invalid(self, "budgets", f"every budget must be in (0, 1], got {b}")
        if len(set(budgets)) != len(budgets):
            raise invalid(self, "budgets", f"duplicated budget(s) in {list(budgets)}")
        if self.metric not in BUDGET_METRICS:
            raise invalid(self, "metric", f"unknown {self.metric!r}; allowed: {list(BUDGET_METRICS)}")
        unknown = sorted(set(self.axes) - set(ROUTER_AXES))
        if unknown:
            raise invalid(self, "axes", f"unknown axis {unknown}; allowed: {list(ROUTER_AXES)}")
        if not isinstance(self.num_choices, int) or self.num_choices < 2:
            raise invalid(self, "num_choices", f"must be an integer >= 2, got {self.num_choices!r}")
        if not 0.0 < self.min_fraction < 1.0:
            raise invalid(self, "min_fraction", f"must be in (0, 1), got {self.min_fraction}")
        multiple = self.width_multiple
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise invalid(self, "width_multiple", f"must be a positive integer (1: exact fractions) or None (the "
                          f"coarsest power of two up to {MAX_WIDTH_MULTIPLE} that keeps num_choices distinct "
                          f"widths), got {multiple!r}")
        if not isinstance(self.hidden_dim, int) or self.hidden_dim < 1:
            raise invalid(self, "hidden_dim", f"must be a positive integer, got {self.hidden_dim!r}")
        for name in ("tau_start", "tau_end", "scale_start", "scale_end", "lr_multiplier"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise invalid(self, name, f"must be a finite number > 0, got {value!r}")
        for name in ("tolerance", "loss_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise invalid(self, name, f"must be a finite number >= 0, got {value!r}")
        if not isinstance(self.nested, bool):
            raise invalid(self, "nested", f"must be True (a nested chain of budgets) or False (free per-budget "
                          f"choices), got {self.nested!r}")
        if not isinstance(self.hard, bool):
            raise invalid(self, "hard", f"must be True (hard masks) or False (soft masks), got {self.hard!r}")
        if self.attention_mode not in ATTENTION_MODES:
            raise invalid(self, "attention_mode", f"must be one of {list(ATTENTION_MODES)}, "
                          f"got {self.attention_mode!r}")

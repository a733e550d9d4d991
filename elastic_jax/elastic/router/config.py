"""The router's settings: budgets, routed axes, candidate grid, MLP width, Gumbel schedules, mask mode."""

from __future__ import annotations

import dataclasses

from elastic_jax.elastic.spec import Budget, ElasticError

MAX_WIDTH_MULTIPLE = 128  # TPU lanes; also whole AVX-512 vectors and tensor-core tiles
ROUTER_AXES = ("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn")


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """Budgets (fractions of the parent under `metric`), axes, candidate grid and schedules of the router."""

    budgets: tuple[float, ...] = (1.0, 0.7, 0.4)
    metric: str = "total_params"
    axes: tuple[str, ...] = ROUTER_AXES
    num_choices: int = 8
    min_fraction: float = 0.25
    width_multiple: int | None = None
    heterogeneous: bool = False
    hidden_dim: int = 128
    tau_start: float = 1.0
    tau_end: float = 0.05
    scale_start: float = 1.0
    scale_end: float = 10.0
    tolerance: float = 0.05
    hard: bool = True
    attention_mode: str = "kv_groups"

    def __post_init__(self):
        budgets = tuple(float(b) for b in self.budgets)
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "axes", tuple(self.axes))
        if not budgets:
            raise ElasticError("router.budgets: at least one budget is needed")
        for b in budgets:
            if not 0.0 < b <= 1.0:
                raise ElasticError(f"router.budgets: every budget must be in (0, 1], got {b}")
        if len(set(budgets)) != len(budgets):
            raise ElasticError(f"router.budgets: duplicated budget(s) in {list(budgets)}")
        Budget(budgets[0], self.metric)  # validates the metric name
        unknown = sorted(set(self.axes) - set(ROUTER_AXES))
        if unknown:
            raise ElasticError(f"router.axes: unknown axis {unknown}; allowed: {list(ROUTER_AXES)}")
        if self.num_choices < 2:
            raise ElasticError(f"router.num_choices must be >= 2, got {self.num_choices}")
        if not 0.0 < self.min_fraction < 1.0:
            raise ElasticError(f"router.min_fraction must be in (0, 1), got {self.min_fraction}")
        multiple = self.width_multiple
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise ElasticError(f"router.width_multiple must be a positive integer (1: exact fractions) or None "
                               f"(the coarsest power of two up to {MAX_WIDTH_MULTIPLE} that keeps num_choices "
                               f"distinct widths), got {multiple!r}")

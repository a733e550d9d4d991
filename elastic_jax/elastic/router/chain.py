"""The nested chain of budgets (`RouterConfig.nested`): a budget may choose, on every axis and layer, only
candidates at most as wide as the next larger trained budget's choice, so each budget is a slice of every larger
one (0.4 of 0.7 as well as of 1.0), not only of the parent.

A choice is an index into an axis's descending candidate widths, so "at most as wide" is "index >= the larger
budget's index" (its floor). Deployment chains the repaired argmax architectures (largest budget first); training
bounds each budget's Gumbel sample by the larger budgets' current argmax chain, which needs no repair search and
so stays inside the compiled step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from elastic_jax.elastic.router.candidates import Axis
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.router.mlp import router_logits

BLOCKED = -1e9  # logit of a candidate wider than the larger budget's choice (zero probability after softmax)


def larger_budget(rc: RouterConfig, budget: float) -> float | None:
    """The smallest trained budget above `budget`, whose choices bound it in a nested chain (None: the largest)."""
    above = [b for b in rc.budgets if b > budget + 1e-9]
    return min(above) if above else None


def allowed(num_choices: int, floor) -> jax.Array:
    """[rows, num_choices] True where a candidate is no wider than the floor's (index >= floor[row])."""
    return jnp.arange(num_choices)[None, :] >= jnp.asarray(floor)[:, None]


def masked(logits: jax.Array, floor) -> jax.Array:
    """Logits with every candidate wider than the floor blocked (floor None: unchanged)."""
    if floor is None:
        return logits
    return jnp.where(allowed(logits.shape[-1], floor), logits, BLOCKED)


def training_floors(params: dict, rc: RouterConfig, axes: Sequence[Axis], codes, budget_index: int
                    ) -> dict[str, jax.Array] | None:
    """Per axis [rows] the narrowest choice index the larger budgets' argmax chain allows `budget_index` (traced,
    no gradient); None when the chain is off or the budget is the largest."""
    budget = rc.budgets[budget_index]
    chain = sorted((i for i, b in enumerate(rc.budgets) if b > budget), key=lambda i: -rc.budgets[i])
    if not rc.nested or not chain:
        return None
    floors = {axis.name: jnp.zeros((axis.rows,), jnp.int32) for axis in axes}
    for i in chain:  # largest first: each budget's argmax within the one above it
        logits = router_logits(params, jnp.asarray(codes[i]), axes)
        floors = {axis.name: jnp.argmax(masked(logits[axis.name], floors[axis.name]), axis=-1).astype(jnp.int32)
                  for axis in axes}
    return jax.tree.map(jax.lax.stop_gradient, floors)

"""The Router: the static description of a router for one parent (axes, candidate masks, budget codes) and
the pure functions of its parameters that training and deployment call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.candidates import build_axes, choice_masks
from elastic_jax.elastic.router.chain import larger_budget, training_floors
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.router.mlp import budget_code, init_router, router_logits
from elastic_jax.elastic.router.repair import argmax_picks
from elastic_jax.elastic.router.resource import resource_loss
from elastic_jax.elastic.router.sampling import masks_from_probs, sample_probs, schedule
from elastic_jax.elastic.spec import ElasticSpec


class Router:
    """Static description of a router for one parent: axes, candidate masks; pure functions of router params."""

    def __init__(self, cfg: ModelConfig, rc: RouterConfig):
        self.cfg, self.rc = cfg, rc
        self.axes = build_axes(cfg, rc)
        self.mask_table = {axis.name: choice_masks(cfg, axis, rc.attention_mode) for axis in self.axes}
        self.codes = np.stack([budget_code(rc, b) for b in rc.budgets])

    def init(self, key: jax.Array) -> dict:
        return init_router(key, self.cfg, self.rc)

    def sample(self, params: dict, budget_index: int, key: jax.Array | None, progress: jax.Array):
        """(masks, resource loss, ratio, probs) of trained budget `budget_index` at training `progress`."""
        tau, scale = schedule(self.rc, progress)
        logits = router_logits(params, jnp.asarray(self.codes[budget_index]), self.axes)
        keys = [None] * len(self.axes) if key is None else list(jax.random.split(key, len(self.axes)))
        floors = training_floors(params, self.rc, self.axes, self.codes, budget_index) or {}
        probs = {axis.name: sample_probs(logits[axis.name], k, tau, scale, self.rc.hard, floors.get(axis.name))
                 for axis, k in zip(self.axes, keys)}
        loss, ratio = resource_loss(self.cfg, self.rc, self.axes, probs, self.rc.budgets[budget_index])
        return masks_from_probs(self.cfg, self.axes, probs, self.mask_table), loss, ratio, probs

    def spec_for(self, params: dict, budget: float) -> ElasticSpec:
        """The argmax architecture for a trained or in-between budget (within the next larger trained budget's
        architecture when the budgets form a nested chain)."""
        return self.picks_for(params, budget)[1]

    def picks_for(self, params: dict, budget: float) -> tuple[dict[str, np.ndarray], ElasticSpec]:
        """(choice index per axis and row, spec) of spec_for."""
        larger = larger_budget(self.rc, budget) if self.rc.nested else None
        floor = None if larger is None else self.picks_for(params, larger)[0]
        logits = router_logits(params, jnp.asarray(budget_code(self.rc, budget)), self.axes)
        return argmax_picks(self.cfg, self.rc, self.axes, logits, budget, floor)

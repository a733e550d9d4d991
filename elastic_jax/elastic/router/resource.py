"""The resource loss: the expected configuration of a router distribution, measured by the same accounting
that every report uses, against the budget's target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.candidates import FIELD_OF_AXIS, Axis
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.spec import Budget


class _ExpectedConfig:
    """A ModelConfig look-alike whose elastic widths are (traced) expected values, so the accounting functions
    give the expected parameter count / memory of a router distribution (differentiably)."""

    def __init__(self, cfg: ModelConfig, widths: dict[str, Any], per_layer: dict[str, dict[int, Any]]):
        self._cfg, self._widths, self._per_layer = cfg, widths, per_layer

    def __getattr__(self, name: str):
        return getattr(self._cfg, name)

    @property
    def hidden_size(self):
        return self._widths.get("hidden_size", self._cfg.hidden_size)

    def width(self, name: str, layer: int):
        if name == "num_key_value_heads" and layer in self._per_layer.get("num_attention_heads", {}):
            cfg = self._cfg
            per_group = cfg.width("num_attention_heads", layer) // cfg.width("num_key_value_heads", layer)
            return self._per_layer["num_attention_heads"][layer] / per_group
        return self._per_layer.get(name, {}).get(layer, self._cfg.width(name, layer))

    def mamba_heads(self, layer: int):
        return self.width("mamba_num_heads", layer)


def expected_config(cfg: ModelConfig, axes: Sequence[Axis], probs: dict[str, jax.Array]) -> _ExpectedConfig:
    """The expected configuration (width = pi . choices per axis and layer) of a router distribution."""
    widths: dict[str, Any] = {}
    per_layer: dict[str, dict[int, Any]] = {}
    for axis in axes:
        expected = probs[axis.name] @ jnp.asarray(axis.choices, jnp.float32)  # [rows]
        field = FIELD_OF_AXIS[axis.name]
        if axis.name == "hidden":
            widths[field] = expected[0]
        else:
            per_layer[field] = {layer: expected[i if axis.heterogeneous else 0] for i, layer in enumerate(axis.layers)}
    return _ExpectedConfig(cfg, widths, per_layer)


def resource_loss(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], probs: dict[str, jax.Array],
                  budget: float) -> tuple[jax.Array, jax.Array]:
    """(loss, ratio): ratio = measure(expected config) / (budget * measure(parent)); loss = |ratio - 1|, zero
    within the tolerance (none for budget 1.0, which this pushes to every axis's largest choice)."""
    metric = Budget(budget, rc.metric)
    ratio = metric.measure(expected_config(cfg, axes, probs)) / metric.target(cfg)
    gap = jnp.abs(ratio - 1.0)
    return jnp.where(gap <= tolerance_for(rc, budget), 0.0, gap), ratio


def tolerance_for(rc: RouterConfig, budget: float) -> float:
    """The resource tolerance of a budget: none for the full model, which must stay the whole parent."""
    return 0.0 if budget >= 1.0 else rc.tolerance

"""The router network: per axis a two-layer MLP from a budget code (one-hot, or interpolated between two
trained budgets) to logits over the candidate widths."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.candidates import Axis, build_axes
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.spec import ElasticError


def init_router(key: jax.Array, cfg: ModelConfig, rc: RouterConfig) -> dict:
    """Router parameters: per axis a two-layer MLP from the budget one-hot to [rows * choices] logits."""
    params = {}
    n = len(rc.budgets)
    for axis, k in zip(build_axes(cfg, rc), jax.random.split(key, len(rc.axes))):
        k1, k2 = jax.random.split(k)
        out = axis.rows * len(axis.choices)
        params[axis.name] = {"w1": jax.random.normal(k1, (n, rc.hidden_dim)) * (1.0 / np.sqrt(n)),
                             "b1": jnp.zeros((rc.hidden_dim,)),
                             "w2": jax.random.normal(k2, (rc.hidden_dim, out)) * (0.01 / np.sqrt(rc.hidden_dim)),
                             "b2": jnp.zeros((out,))}
    return params


def budget_code(rc: RouterConfig, budget: float) -> np.ndarray:
    """One-hot of a trained budget, or the linear interpolation of its two neighbours' one-hots."""
    b = np.asarray(rc.budgets)
    code = np.zeros(len(b), np.float32)
    exact = np.flatnonzero(np.isclose(b, budget))
    if exact.size:
        code[exact[0]] = 1.0
        return code
    if not b.min() < budget < b.max():
        raise ElasticError(f"budget {budget} is outside the trained range [{b.min()}, {b.max()}]")
    above = min((i for i in range(len(b)) if b[i] > budget), key=lambda i: b[i])
    below = max((i for i in range(len(b)) if b[i] < budget), key=lambda i: b[i])
    t = (budget - b[below]) / (b[above] - b[below])
    code[above], code[below] = t, 1.0 - t
    return code


def router_logits(params: dict, code: jax.Array, axes: Sequence[Axis]) -> dict[str, jax.Array]:
    """Per-axis logits [rows, choices] for a budget code."""
    out = {}
    for axis in axes:
        p = params[axis.name]
        h = jax.nn.leaky_relu(code @ p["w1"] + p["b1"])
        out[axis.name] = (h @ p["w2"] + p["b2"]).reshape(axis.rows, len(axis.choices))
    return out

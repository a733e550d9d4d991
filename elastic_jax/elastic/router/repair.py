"""Deployment architectures: the argmax choice per axis, repaired into the budget's tolerance band by a
search guided by the router's own preferences."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.candidates import FIELD_OF_AXIS, KIND_OF_AXIS, Axis
from elastic_jax.elastic.router.chain import masked
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.router.resource import tolerance_for
from elastic_jax.elastic.spec import Budget, ElasticSpec


def spec_from_picks(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], picks: dict[str, np.ndarray]
                    ) -> ElasticSpec:
    """The ElasticSpec of one choice index per axis (and layer, when heterogeneous)."""
    fields: dict[str, Any] = {}
    for axis in axes:
        field = FIELD_OF_AXIS[axis.name]
        if axis.heterogeneous:
            per_layer = [cfg.width(field, i) if cfg.pattern[i] == KIND_OF_AXIS[axis.name] else 0
                         for i in range(cfg.num_layers)]
            for i, layer in enumerate(axis.layers):
                per_layer[layer] = int(axis.choices[picks[axis.name][i]])
            fields[field] = tuple(per_layer)
        else:
            fields[field] = int(axis.choices[picks[axis.name][0]])
    return ElasticSpec(**fields, attention_mode=rc.attention_mode).validate(cfg)


def argmax_spec(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], logits: dict[str, jax.Array],
                budget: float | None = None, floor: dict[str, np.ndarray] | None = None) -> ElasticSpec:
    """The deployment architecture of a budget: the argmax choice of every axis (and layer).

    With `budget` given and the argmax outside the tolerance, the nearest in-tolerance architecture is taken:
    one choice step at a time towards the target, on the axis whose next choice the router rates highest among
    the steps that land inside the tolerance or, when none does, among those that bring the size closer (so a
    coarse step cannot jump over the band and back), so a trained router's preferences still decide which axes
    give way. `floor` (per axis [rows] choice indices: a nested chain's larger budget) bounds every choice, the
    argmax and the repair alike, to candidates no wider than the floor's.
    """
    return argmax_picks(cfg, rc, axes, logits, budget, floor)[1]


def argmax_picks(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], logits: dict[str, jax.Array],
                 budget: float | None = None, floor: dict[str, np.ndarray] | None = None
                 ) -> tuple[dict[str, np.ndarray], ElasticSpec]:
    """(choice indices, spec) of argmax_spec."""
    floor = floor or {}
    picks = {a.name: np.asarray(jnp.argmax(masked(logits[a.name], floor.get(a.name)), axis=-1)) for a in axes}
    spec = spec_from_picks(cfg, rc, axes, picks)
    if budget is None:
        return picks, spec
    metric = Budget(budget, rc.metric)
    target = metric.target(cfg)
    tolerance = tolerance_for(rc, budget) + 1e-12
    ratio_of = lambda s: metric.measure(s.apply_to(cfg)) / target  # noqa: E731
    log_probs = {a.name: np.asarray(jax.nn.log_softmax(logits[a.name], axis=-1)) for a in axes}
    neighbours = functools.partial(_neighbours, axes, log_probs=log_probs, floor=floor)

    def walk(picks, spec):
        """Steps towards the band while one lands inside or comes closer: (picks, spec, inside the band)."""
        ratio = ratio_of(spec)
        while abs(ratio - 1.0) > tolerance:
            moves = []
            for log_prob, moved in neighbours(picks, steps=(1 if ratio > 1.0 else -1,)):
                moved_spec = spec_from_picks(cfg, rc, axes, moved)  # choices are descending: +1 is smaller
                moves.append((log_prob, ratio_of(moved_spec), moved, moved_spec))
            inside = [m for m in moves if abs(m[1] - 1.0) <= tolerance]
            closer = [m for m in moves if abs(m[1] - 1.0) < abs(ratio - 1.0)]
            if not (inside or closer):
                return picks, spec, False
            _, ratio, picks, spec = max(inside or closer, key=lambda m: m[0])
        return picks, spec, True

    picks, spec, ok = walk(picks, spec)
    if ok:
        return picks, spec
    found = _nearby_repair(cfg, rc, axes, picks, neighbours, ratio_of, tolerance)
    if found is not None:
        return found
    # Growing is bounded (by the parent, or a nested chain's larger budget), so a budget stuck below its band
    # may need to give way on other axes: walk down from the widest allowed architecture instead.
    widest = {a.name: np.asarray(floor.get(a.name, np.zeros(a.rows, np.int64))) for a in axes}
    top_picks, top_spec, ok = walk(widest, spec_from_picks(cfg, rc, axes, widest))
    return (top_picks, top_spec) if ok else (picks, spec)


def _neighbours(axes: Sequence[Axis], picks: dict[str, np.ndarray], log_probs: dict[str, np.ndarray],
                steps: tuple[int, ...] = (-1, 1), floor: dict[str, np.ndarray] | None = None):
    """Every architecture one choice step away (in the given directions, never wider than `floor`), with the
    router's log-prob of it."""
    for axis in axes:
        low = np.zeros(axis.rows, np.int64) if not floor or axis.name not in floor else np.asarray(floor[axis.name])
        for row in range(axis.rows):
            for step in steps:
                new = picks[axis.name][row] + step
                if low[row] <= new < len(axis.choices):
                    moved = dict(picks, **{axis.name: picks[axis.name].copy()})
                    moved[axis.name][row] = new
                    yield log_probs[axis.name][row, new], moved


def _nearby_repair(cfg, rc, axes, picks, neighbours, ratio_of, tolerance,
                   max_evaluations: int = 20000) -> tuple[dict[str, np.ndarray], ElasticSpec] | None:
    """When every single step overshoots the band: the in-tolerance architecture a few steps away (steps up and
    down on different axes) that the router rates highest, searching 2 steps deep, then 3 when the number of
    neighbours keeps that under `max_evaluations`; None if there is none."""
    branching = sum(1 for _ in neighbours(picks))
    frontier = [(0.0, picks)]
    for depth in (1, 2, 3):
        if depth == 3 and branching ** 3 > max_evaluations:
            break
        frontier = [(lp + lp_step, moved) for lp, node in frontier for lp_step, moved in neighbours(node)]
        if depth == 1:
            continue
        best = None
        for lp, node in frontier:
            spec = spec_from_picks(cfg, rc, axes, node)
            if abs(ratio_of(spec) - 1.0) <= tolerance and (best is None or lp > best[0]):
                best = (lp, node, spec)
        if best is not None:
            return best[1], best[2]
    return None

"""Router-free budget search (the Minitron-style baseline): grid candidates near a budget, scored zero-shot.

Candidates are homogeneous specs built from a grid of per-axis fractions of an importance-permuted parent
(so every candidate is a prefix). Those whose budget metric lies within `tolerance` of the target are scored
by next-token loss (or KL to the parent) on calibration batches through the parent's masked forward with the
candidate's hard masks, which equals the sliced model but shares one compiled program across all candidates.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.importance import segment_batch, token_batch
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.elastic.slicing import spec_masks
from elastic_jax.elastic.spec import AXES, AXIS_FIELDS, WIDTH_FIELDS, Budget, ElasticError, ElasticSpec, check_axis
from elastic_jax.model.functional import build

DEFAULT_GRID = (1.0, 0.75, 0.5)
OBJECTIVES = ("loss", "kl")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One spec near the budget: its metric value, ratio to the target, and zero-shot score (lower is better)."""

    spec: ElasticSpec
    measure: int
    ratio: float
    score: float = float("nan")


def _axes_present(cfg: ModelConfig, axes: Sequence[str] | None, layer_order: Sequence[int] | None) -> list[str]:
    """The axes a search varies: those the pattern has (depth only with a layer order), optionally restricted."""
    axis_char = dict(WIDTH_FIELDS.values())
    present = [a for a in AXES if a == "hidden" or (a in axis_char and axis_char[a] in cfg.pattern)
               or (a == "depth" and layer_order is not None and cfg.num_layers > 1)]
    if axes is None:
        return present
    for axis in axes:
        check_axis(axis)
        if axis == "depth" and layer_order is None:
            raise ElasticError("searching over depth needs layer_order (ranking['depth'] from run_importance)")
    return [a for a in present if a in axes]


def candidate_specs(cfg: ModelConfig, budget: Budget, *, grid: Sequence[float] = DEFAULT_GRID,
                    tolerance: float = 0.05, axes: Sequence[str] | None = None, attention_mode: str = "kv_groups",
                    layer_order: Sequence[int] | None = None) -> list[Candidate]:
    """Every distinct homogeneous grid spec whose budget metric is within `tolerance` of the target."""
    if not grid or any(not 0 < f <= 1 for f in grid):
        raise ElasticError(f"search grid must be fractions in (0, 1], got {list(grid)}")
    target = budget.target(cfg)
    names = _axes_present(cfg, axes, layer_order)
    options = []
    for axis in names:
        specs = {ElasticSpec.from_fractions(cfg, {axis: f}, attention_mode=attention_mode, layer_order=layer_order)
                 for f in grid}
        field = AXIS_FIELDS[axis]
        options.append(sorted({getattr(s, field) for s in specs}, key=str))
    seen, out, closest = set(), [], None
    for combo in itertools.product(*options):
        values = {AXIS_FIELDS[a]: v for a, v in zip(names, combo) if v is not None}
        spec = ElasticSpec(attention_mode=attention_mode, **values)
        if spec in seen:
            continue
        seen.add(spec)
        measure = budget.measure(spec.apply_to(cfg))
        ratio = measure / target
        closest = ratio if closest is None or abs(ratio - 1) < abs(closest - 1) else closest
        if abs(ratio - 1) <= tolerance:
            out.append(Candidate(spec, measure, ratio))
    if not out:
        raise ElasticError(f"no grid candidate is within {tolerance:.0%} of the budget ({budget.metric} at "
                           f"{budget.fraction:g}); the closest is at {closest:.3f}x the target: use a finer grid "
                           "(more fractions) or a larger tolerance")
    return out


@lru_cache(maxsize=16)
def _scorer(cfg: ModelConfig):
    """Jitted (params, tokens [b, L+1], masks, parent logits) -> (next-token loss, KL(parent || masked))."""
    model = build(cfg)

    def score(params: dict, seqs: jax.Array, segments: jax.Array | None, masks: dict, reference: jax.Array):
        logits = model.apply({"params": params}, seqs[:, :-1], masks=masks, segment_ids=segments)[0]
        logp = jax.nn.log_softmax(logits, axis=-1)
        loss = -jnp.mean(jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1))
        ref = jax.nn.log_softmax(reference, axis=-1)
        kl = jnp.mean(jnp.sum(jnp.exp(ref) * (ref - logp), axis=-1))
        return loss, kl

    reference = jax.jit(lambda params, seqs, segments: model.apply({"params": params}, seqs[:, :-1],
                                                                   segment_ids=segments)[0])
    return jax.jit(score), reference


def score_candidates(cfg: ModelConfig, params: dict, candidates: Iterable[Candidate], batches: Iterable[Any],
                     objective: str = "loss") -> list[Candidate]:
    """Candidates with their zero-shot score (mean over batches), best first. Batches are [b, L+1] sequences."""
    if objective not in OBJECTIVES:
        raise ElasticError(f"search objective {objective!r} is unknown; allowed: {list(OBJECTIVES)}")
    score, reference = _scorer(cfg)
    batches = list(batches)
    seqs = [token_batch(cfg, b) for b in batches]
    if not seqs or seqs[0].shape[1] < 2:
        raise ElasticError("search needs at least one calibration batch of sequences with 2 or more tokens")
    segments = [None if (seg := segment_batch(b)) is None else seg[:, :-1] for b in batches]
    refs = [reference(params, s, g) for s, g in zip(seqs, segments)]
    out = []
    for cand in candidates:
        masks = jax.tree_util.tree_map(jnp.asarray, spec_masks(cfg, cand.spec))
        values = [score(params, s, g, masks, r)[OBJECTIVES.index(objective)] for s, g, r in zip(seqs, segments, refs)]
        out.append(dataclasses.replace(cand, score=float(np.mean(values))))
    return sorted(out, key=lambda c: c.score)


def search_spec(cfg: ModelConfig, params: dict, budget: Budget, batches: Iterable[Any], *,
                grid: Sequence[float] = DEFAULT_GRID, tolerance: float = 0.05, axes: Sequence[str] | None = None,
                attention_mode: str = "kv_groups", layer_order: Sequence[int] | None = None,
                objective: str = "loss", max_candidates: int = 64, seed: int = 0) -> ElasticSpec:
    """The best zero-shot homogeneous spec within `tolerance` of `budget` for an importance-permuted parent.

    At most `max_candidates` (a seeded sample when more qualify) are scored; pass `layer_order`
    (ranking["depth"]) to let the search drop layers too.
    """
    return search_candidates(cfg, params, budget, batches, grid=grid, tolerance=tolerance, axes=axes,
                             attention_mode=attention_mode, layer_order=layer_order, objective=objective,
                             max_candidates=max_candidates, seed=seed)[0].spec


def search_candidates(cfg: ModelConfig, params: dict, budget: Budget, batches: Iterable[Any], *,
                      grid: Sequence[float] = DEFAULT_GRID, tolerance: float = 0.05,
                      axes: Sequence[str] | None = None, attention_mode: str = "kv_groups",
                      layer_order: Sequence[int] | None = None, objective: str = "loss", max_candidates: int = 64,
                      seed: int = 0) -> list[Candidate]:
    """Like search_spec, but every scored candidate, best first (for reports)."""
    candidates = candidate_specs(cfg, budget, grid=grid, tolerance=tolerance, axes=axes,
                                 attention_mode=attention_mode, layer_order=layer_order)
    return score_candidates(cfg, params, _at_most(candidates, max_candidates, seed), batches, objective)


def nests_in(small: ElasticSpec, large: ElasticSpec, cfg: ModelConfig) -> bool:
    """True when `small` is a prefix of `large` in parent `cfg`: its layers are among the larger one's and every
    width on every axis (hidden, and each kept layer's heads, experts, FFN widths) is at most the larger one's."""
    kept = small.kept_layers(cfg)
    if small.hidden(cfg) > large.hidden(cfg) or not set(kept) <= set(large.kept_layers(cfg)):
        return False
    return all(small.width(cfg, name, i) <= large.width(cfg, name, i)
               for name, (_, char) in WIDTH_FIELDS.items() for i in kept if cfg.pattern[i] == char)


def _at_most(candidates: list[Candidate], count: int, seed: int) -> list[Candidate]:
    """The candidates, or a seeded sample of `count` of them (in their order)."""
    if len(candidates) <= count:
        return candidates
    picks = np.random.default_rng(seed).choice(len(candidates), count, replace=False)
    return [candidates[i] for i in sorted(picks)]


def router_free_specs(cfg: ModelConfig, params: dict, rc: RouterConfig, batches: Iterable[Any], *,
                      max_candidates: int = 64, seed: int = 0) -> dict[float, ElasticSpec]:
    """Every budget of `rc` by search instead of a router (`elastic.budget_search`): the best zero-shot homogeneous
    grid spec over the router's axes within its tolerance, the whole parent for 1.0. In a nested chain
    (`rc.nested`) a budget chooses only among slices of the next larger budget's choice."""
    batches = list(batches)
    specs: dict[float, ElasticSpec] = {}
    for budget in sorted(rc.budgets, reverse=True):
        if budget >= 1.0:
            specs[budget] = ElasticSpec(attention_mode=rc.attention_mode)
            continue
        candidates = candidate_specs(cfg, Budget(budget, rc.metric), tolerance=rc.tolerance, axes=rc.axes,
                                     attention_mode=rc.attention_mode)
        larger = specs[min(b for b in specs if b > budget)] if rc.nested else None
        if larger is not None:
            candidates = [c for c in candidates if nests_in(c.spec, larger, cfg)]
            if not candidates:
                raise ElasticError(f"budget search: no grid candidate for budget {budget:g} is within "
                                   f"{rc.tolerance:.0%} of its target and a slice of budget {min(specs):g}'s "
                                   "choice; set elastic.router.nested=False or a larger elastic.router.tolerance")
        specs[budget] = score_candidates(cfg, params, _at_most(candidates, max_candidates, seed), batches)[0].spec
    return specs

"""Router-free budget search on the trained parent: candidates near the budget, the best by zero-shot loss."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.elastic import Budget, ElasticError, candidate_specs, search_candidates, search_spec, slice_params
from tests.elastic.conftest import next_token_loss


def test_search_finds_the_best_candidate_near_the_budget(ranked_parent):
    parent, cfg = ranked_parent.parent, ranked_parent.parent.cfg
    budget = Budget(0.6, "active_params")
    batches = parent.evaluation[:1]
    scored = search_candidates(cfg, ranked_parent.permuted, budget, batches,
                               layer_order=ranked_parent.ranking["depth"], max_candidates=8)
    assert len(scored) == 8 and [c.score for c in scored] == sorted(c.score for c in scored)
    best = scored[0]
    assert abs(best.ratio - 1) <= 0.05 and best.measure == budget.measure(best.spec.apply_to(cfg))
    assert best.score < np.median([c.score for c in scored])
    # the masked score is the sliced model's loss
    sub_params, sub_cfg = slice_params(ranked_parent.permuted, cfg, best.spec)
    sliced = float(next_token_loss(ej.apply(sub_cfg, sub_params, batches[0][:, :-1]), jnp.asarray(batches[0])))
    assert sliced == pytest.approx(best.score, abs=1e-4)
    assert search_spec(cfg, ranked_parent.permuted, budget, batches,
                       layer_order=ranked_parent.ranking["depth"], max_candidates=8) == best.spec


def test_memory_budget_candidates(ranked_parent):
    cfg = ranked_parent.parent.cfg
    budget = Budget(0.7, "memory", batch=8, context=512, weight_dtype="float32")
    candidates = candidate_specs(cfg, budget, grid=(1.0, 0.5), axes=["hidden", "mamba_heads", "attention_heads"])
    target = budget.target(cfg)
    assert candidates and all(abs(c.measure / target - 1) <= 0.05 for c in candidates)
    assert all(c.spec.layers is None and c.spec.intermediate_size is None for c in candidates)


def test_search_errors(ranked_parent):
    parent, cfg = ranked_parent.parent, ranked_parent.parent.cfg
    with pytest.raises(ElasticError, match=r"no grid candidate is within 1% of the budget .*finer grid"):
        candidate_specs(cfg, Budget(0.05), tolerance=0.01)
    with pytest.raises(ElasticError, match="searching over depth needs layer_order"):
        candidate_specs(cfg, Budget(0.5), axes=["depth"])
    with pytest.raises(ElasticError, match=r"unknown elastic axis 'width'"):
        candidate_specs(cfg, Budget(0.5), axes=["width"])
    with pytest.raises(ElasticError, match=r"search objective 'ce' is unknown; allowed: \['loss', 'kl'\]"):
        search_spec(cfg, ranked_parent.permuted, Budget(0.8), parent.evaluation, objective="ce")

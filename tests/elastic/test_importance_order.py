"""elastic.importance_order="random": a seeded random order of every axis (the ablation of importance order)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.config import ConfigError
from elastic_jax.elastic import permute_params, ranking_to_json
from elastic_jax.elastic.config import ElasticConfig
from elastic_jax.elastic.importance import random_ranking
from elastic_jax.experiment import ExperimentConfig, load_experiment
from elastic_jax.train.elastify import rank_and_permute
from elastic_jax.train.loop import parse_experiment
from tests.elastic.helpers import fast_random_params


def _axes(ranking: dict) -> list[tuple[str, np.ndarray]]:
    """(name, order) of every ranked width axis."""
    out = [("hidden", np.asarray(ranking["hidden"]))]
    for layer, entry in enumerate(ranking["layers"]):
        out += [(f"layers[{layer}].{name}", np.asarray(order)) for name, order in entry.items()]
    return out


def test_random_order_is_a_valid_permutation_unlike_the_importance_one_and_keeps_the_function(ranked_parent):
    parent = ranked_parent.parent
    cfg = parent.cfg
    ranking = random_ranking(cfg, seed=3)
    for name, order in _axes(ranking):
        assert sorted(order.tolist()) == list(range(len(order))), name
    assert sorted(np.asarray(ranking["depth"]).tolist()) == list(range(cfg.num_layers))
    # different from the importance order on most axes, and from another seed's; the same for the same seed
    importance = dict(_axes(ranked_parent.ranking))
    differs = [name for name, order in _axes(ranking) if not np.array_equal(order, importance[name])]
    assert len(differs) > len(importance) // 2, differs
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(_axes(ranking), _axes(random_ranking(cfg, 4))))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(_axes(ranking), _axes(random_ranking(cfg, 3))))
    # permute_params validates the group structure (heads within groups, KV groups whole); the function is kept
    permuted = permute_params(parent.params, cfg, ranking)
    tokens = parent.evaluation[0][:4, :-1]
    np.testing.assert_allclose(np.asarray(ej.apply(cfg, permuted, tokens)),
                               np.asarray(ej.apply(cfg, parent.params, tokens)), atol=1e-5, rtol=0)


def test_elastify_permutes_by_the_runs_seed_without_calibration():
    overrides = ["elastic.importance_order='random'", "train.seed=5"]
    spec = parse_experiment(load_experiment("tiny_elastic", overrides))
    ec = ExperimentConfig.from_dict(load_experiment("tiny_elastic", overrides)).require_elastic()
    params = fast_random_params(spec.model)
    expected = random_ranking(spec.model, 5)
    for meta in ({}, {"elastic": {"ranking": ranking_to_json(random_ranking(spec.model, 9))}}):  # ranked or not
        permuted, ranking = rank_and_permute(spec, ec, params, meta)
        assert ranking == ranking_to_json(expected)
        for got, want in zip(jax.tree.leaves(permuted), jax.tree.leaves(permute_params(params, spec.model, expected)),
                             strict=True):
            np.testing.assert_array_equal(got, want)


def test_importance_order_names_the_allowed_values():
    with pytest.raises(ConfigError, match=r"importance_order: must be one of \['importance', 'random'\], got 'rand'"):
        ElasticConfig(importance_order="rand")
    with pytest.raises(ConfigError, match=r"elastic\.importance_order: must be one of \['importance', 'random'\]"):
        ExperimentConfig.from_dict(load_experiment("tiny_elastic", ["elastic.importance_order='sorted'"]))
    with pytest.raises(ConfigError, match=r"importance_order: 'random' permutes the parent; it needs permute=True"):
        ElasticConfig(importance_order="random", permute=False)

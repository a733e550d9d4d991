"""Elastic (nested) models: specs and budgets, accounting, importance, permutation, slicing, budget search."""

from elastic_jax.elastic.accounting import (
    count_params,
    flops_per_token,
    footprint,
    memory_bytes,
    mixer_params,
    weight_bytes,
)
from elastic_jax.elastic.importance import compute_scores, rank_from_scores, run_importance
from elastic_jax.elastic.permute import permute_params, ranking_to_json
from elastic_jax.elastic.search import Candidate, candidate_specs, search_candidates, search_spec
from elastic_jax.elastic.slicing import full_masks, slice_params, spec_masks
from elastic_jax.elastic.spec import AXES, Budget, ElasticError, ElasticSpec

__all__ = [
    "AXES", "Budget", "Candidate", "ElasticError", "ElasticSpec", "candidate_specs", "compute_scores", "count_params",
    "flops_per_token", "footprint", "full_masks", "memory_bytes", "mixer_params", "permute_params", "rank_from_scores",
    "ranking_to_json", "run_importance", "search_candidates", "search_spec", "slice_params", "spec_masks",
    "weight_bytes",
]

"""Permutation preserves the function; a slice equals the hard-masked parent; a homogeneous slice exported to
Hugging Face format loads in transformers with the same logits and the parameter count our accounting gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import NemotronHForCausalLM

import elastic_jax as ej
from elastic_jax.elastic import ElasticError, ElasticSpec, full_masks, permute_params, slice_params, spec_masks
from tests.elastic.helpers import fast_random_params, random_ranking, random_spec
from tests.model.helpers import PARITY_CONFIGS, random_tokens

NAMES = sorted(PARITY_CONFIGS)


@pytest.fixture(scope="module", params=NAMES)
def parent(request):
    cfg = PARITY_CONFIGS[request.param]
    return request.param, cfg, fast_random_params(cfg, seed=7), random_tokens(cfg, 2, cfg.chunk_size + 5, seed=3)


def _logits(cfg, params, tokens, masks=None) -> np.ndarray:
    return np.asarray(ej.apply(cfg, params, tokens, masks=masks))


def test_permuted_parent_computes_the_same_logits(parent):
    name, cfg, params, tokens = parent
    reference = _logits(cfg, params, tokens)
    assert np.abs(reference).max() > 0.5
    for seed in range(2):
        permuted = permute_params(params, cfg, random_ranking(cfg, np.random.default_rng(seed)))
        np.testing.assert_allclose(_logits(cfg, permuted, tokens), reference, atol=1e-5, rtol=0)


def test_all_ones_masks_change_nothing(parent):
    _, cfg, params, tokens = parent
    np.testing.assert_allclose(_logits(cfg, params, tokens, full_masks(cfg)), _logits(cfg, params, tokens),
                               atol=1e-5, rtol=0)


def test_slice_equals_hard_masked_parent(parent):
    name, cfg, params, tokens = parent
    rng = np.random.default_rng(NAMES.index(name))
    params = permute_params(params, cfg, random_ranking(cfg, rng))
    for homogeneous in (True, False):
        spec = random_spec(cfg, rng, homogeneous=homogeneous)
        sub_params, sub_cfg = slice_params(params, cfg, spec)
        assert jax.tree_util.tree_map(lambda x: x.shape, sub_params) == jax.tree_util.tree_map(
            lambda x: x.shape, ej.param_shapes(sub_cfg))
        sliced = _logits(sub_cfg, sub_params, tokens)
        np.testing.assert_allclose(sliced, _logits(cfg, params, tokens, spec_masks(cfg, spec)), atol=1e-5, rtol=0,
                                   err_msg=str(spec))


def test_slicing_is_jit_friendly():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = fast_random_params(cfg, seed=1)
    spec = ElasticSpec(hidden_size=20, mamba_num_heads=2, num_attention_heads=2, n_routed_experts=4, layers=(0, 1, 2))
    jitted = jax.jit(lambda p: slice_params(p, cfg, spec)[0])(jax.tree_util.tree_map(jnp.asarray, params))
    eager, _ = slice_params(params, cfg, spec)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_soft_masks_are_differentiable():
    cfg = PARITY_CONFIGS["all_blocks"]
    params, tokens = fast_random_params(cfg, seed=2), random_tokens(cfg, 1, 6)
    masks = jax.tree_util.tree_map(lambda m: jnp.asarray(m) * 0.7, full_masks(cfg))
    grads = jax.grad(lambda m: jnp.sum(ej.apply(cfg, params, jnp.asarray(tokens), masks=m) ** 2))(masks)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name, seed", [("all_blocks", 11), ("grouped_routing", 12)])
def test_homogeneous_slice_exports_to_transformers(name, seed, tmp_path):
    cfg = PARITY_CONFIGS[name]
    rng = np.random.default_rng(seed)
    params = permute_params(fast_random_params(cfg, seed=seed), cfg, random_ranking(cfg, rng))
    spec = random_spec(cfg, rng, homogeneous=True, depth=False)
    sub_params, sub_cfg = slice_params(params, cfg, spec)
    assert sub_cfg.is_homogeneous and not spec.is_full(cfg)
    ej.to_hf(sub_cfg, sub_params, tmp_path)
    model = NemotronHForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    tokens = random_tokens(cfg, 2, 2 * cfg.chunk_size + 3, seed=seed)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(_logits(sub_cfg, sub_params, tokens), theirs, atol=1e-4, rtol=0)
    numel = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    assert ej.count_params(sub_cfg)[0] == numel


def test_bad_rankings():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = fast_random_params(cfg)
    layers = [{} for _ in cfg.pattern]
    with pytest.raises(ElasticError, match=r"ranking\.hidden: expected a permutation of 0\.\.31"):
        permute_params(params, cfg, {"hidden": np.arange(31)})
    layers[0] = {"mamba_heads": np.array([2, 1, 0, 3])}
    with pytest.raises(ElasticError, match=r"ranking\.layers\[0\]\.mamba_heads: must reorder only within each"):
        permute_params(params, cfg, {"layers": layers})
    layers[0] = {}
    layers[1] = {"attention_heads": np.array([0, 2, 1, 3])}
    with pytest.raises(ElasticError, match=r"ranking\.layers\[1\]\.attention_heads: query heads may only move within"):
        permute_params(params, cfg, {"layers": layers})
    layers[1] = {"ffn": np.arange(4)}
    with pytest.raises(ElasticError, match=r"ranking\.layers\[1\]: axes \['ffn'\] do not apply to a '\*' layer"):
        permute_params(params, cfg, {"layers": layers})


def test_ranking_survives_json():
    import json

    from elastic_jax.elastic import ranking_to_json

    cfg = PARITY_CONFIGS["grouped_routing"]
    params = fast_random_params(cfg, seed=4)
    ranking = random_ranking(cfg, np.random.default_rng(4))
    stored = json.loads(json.dumps(ranking_to_json(ranking)))
    a, b = permute_params(params, cfg, ranking), permute_params(params, cfg, stored)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

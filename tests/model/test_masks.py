"""Typed masks: an empty Masks is the plain model, unset fields are no pytree leaves, and a mask dict is refused."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.elastic import full_masks
from elastic_jax.model.functional import InputError
from elastic_jax.model.masks import LayerMasks, Masks
from tests.elastic.helpers import fast_random_params
from tests.model.helpers import PARITY_CONFIGS, random_tokens

CFG = PARITY_CONFIGS["all_blocks"]


def test_empty_masks_are_the_plain_model():
    params, tokens = fast_random_params(CFG, seed=5), random_tokens(CFG, 1, 6)
    np.testing.assert_array_equal(np.asarray(ej.apply(CFG, params, tokens, masks=Masks())),
                                  np.asarray(ej.apply(CFG, params, tokens)))


def test_only_set_fields_are_leaves():
    assert jax.tree_util.tree_leaves(Masks(layers=(LayerMasks(), LayerMasks()))) == []
    masks = full_masks(CFG)
    kinds = [{f for f in ("mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn")
              if layer.get(f) is not None} for layer in masks.layers]
    assert kinds == [{"mamba_heads"}, {"attention_heads"}, {"experts", "expert_ffn", "shared_ffn"}, {"ffn"}]
    assert len(jax.tree_util.tree_leaves(masks)) == 1 + 4 + 6  # hidden, a depth per layer, the kinds' masks


def test_a_mask_dict_is_refused_before_compilation():
    params, tokens = fast_random_params(CFG, seed=5), random_tokens(CFG, 1, 6)
    with pytest.raises(InputError, match="masks: expected an elastic_jax.model.masks.Masks"):
        ej.apply(CFG, params, tokens, masks={"hidden": np.ones(CFG.hidden_size, np.float32)})

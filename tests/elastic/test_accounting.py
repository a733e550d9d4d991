"""Accounting from shapes: parameter counts, memory (weights + what init_cache allocates) and FLOPs, for the
Nemotron 3 Nano shape and its nested specs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.elastic import Budget, ElasticSpec, accounting
from elastic_jax.model.cache import init_cache
from tests.model.helpers import PARITY_CONFIGS


@pytest.fixture(scope="module")
def nano():
    return ej.load_config("nemotron3_nano_30b_a3b")


def _numel(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _allocated_cache_bytes(cfg, batch: int, context: int) -> int:
    """Bytes of the per-layer arrays init_cache allocates, from shapes only (nothing is allocated)."""
    cache = jax.eval_shape(lambda: init_cache(cfg, batch, context))
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache["layers"]))


def test_nano_parameter_counts(nano):
    total, active = accounting.count_params(nano)
    assert accounting.format_count(total) == "31.58B" and accounting.format_count(active) == "3.58B"
    assert total == _numel(ej.param_shapes(nano))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nano_memory_equals_weights_plus_allocated_cache(nano, dtype):
    batch, context = 2, 1024
    cache = _allocated_cache_bytes(nano, batch, context)
    assert accounting.memory_bytes(nano, batch, context, dtype) == accounting.weight_bytes(nano, dtype) + cache
    bias = accounting.float32_params(nano)
    assert bias == 23 * 128  # one fp32 correction bias per MoE layer
    if dtype == "float32":  # float32 weights are exactly the parameter pytree
        shapes = ej.param_shapes(nano)
        assert accounting.weight_bytes(nano, dtype) == sum(x.size * 4 for x in jax.tree_util.tree_leaves(shapes))


def test_nano_spec_at_sixty_percent(nano):
    spec = ElasticSpec.from_fractions(nano, {a: 0.6 for a in ("hidden", "mamba_heads", "experts", "expert_ffn",
                                                              "shared_ffn")})
    sub = spec.apply_to(nano)
    assert (sub.hidden_size, sub.mamba_num_heads, sub.n_routed_experts) == (1613, 40, 77)
    parent, child = accounting.footprint(nano), accounting.footprint(sub)
    assert child["total_params"] == _numel(ej.param_shapes(sub))
    ratio = {k: child[k] / parent[k] for k in parent}
    # experts dominate the total: ~0.6 (experts) * 0.6 (hidden) * 0.6 (width) of those, more of the rest
    assert 0.2 < ratio["total_params"] < 0.4 and 0.3 < ratio["active_params"] < 0.6
    assert 40 / 64 < ratio["cache_bytes"] < 1  # SSM state shrinks with the heads; the KV cache (heads kept) does not
    assert ratio["flops_per_token"] < 0.6 and child["memory_bytes"] < parent["memory_bytes"]
    assert Budget(0.3).measure(sub) == child["total_params"]
    memory = Budget(0.5, "memory", batch=8, context=8192, weight_dtype="float8_e4m3fn")
    assert memory.measure(sub) == accounting.weight_bytes(sub, "float8_e4m3fn") + _allocated_cache_bytes(sub, 8, 8192)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_small_configs_memory_and_flops(name):
    cfg = PARITY_CONFIGS[name]
    assert accounting.memory_bytes(cfg, 3, 40, "float32") == (_numel(ej.param_shapes(cfg)) * 4
                                                              + _allocated_cache_bytes(cfg, 3, 40))
    short, long = accounting.flops_per_token(cfg, 16), accounting.flops_per_token(cfg, 1024)
    attention_layers = cfg.pattern.count("*")
    assert long - short == attention_layers * 4 * cfg.num_attention_heads * cfg.head_dim * (1024 - 16)
    assert short > 2 * (accounting.count_params(cfg)[1] - cfg.vocab_size * cfg.hidden_size) * 0.9


def _sliced_spec(cfg, seed: int) -> ElasticSpec:
    """A random nested spec: every elastic axis cut to a random fraction, and a random depth."""
    rng = np.random.default_rng(seed)
    fractions = {axis: float(rng.uniform(0.2, 1.0)) for axis in ("hidden", "mamba_heads", "attention_heads", "ffn",
                                                                  "experts", "expert_ffn", "shared_ffn", "depth")}
    order = rng.permutation(cfg.num_layers).tolist()
    return ElasticSpec.from_fractions(cfg, fractions, layer_order=order, attention_mode=str(
        rng.choice(["kv_groups", "query_heads"])))


def _active_from_tree(cfg, params) -> int:
    """Active parameters of a real pytree: per-expert arrays (their leading axis the layer's experts) count top-k."""
    active = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", k)) for k in path]
        layer = int(keys[0].split("_")[1]) if keys[0].startswith("layers_") else None
        per_expert = layer is not None and cfg.pattern[layer] == "E" and keys[-1] in ("up_proj", "down_proj")
        active += leaf.size // leaf.shape[0] * cfg.num_experts_per_tok if per_expert else leaf.size
    return active


@pytest.mark.parametrize("seed", range(3))
def test_counts_from_declarations_equal_the_initialised_tree(seed):
    """Counting from the declarations equals counting the pytree the model's init makes, and the tree a random
    spec slices out of it (accounting reads only the declarations and the block kinds' records). Shapes only:
    init and slicing are evaluated abstractly, so no array is allocated or compiled."""
    from elastic_jax.elastic.slicing import slice_params
    from tests.model.random_configs import random_config

    cfg = random_config(seed)
    params = ej.param_shapes(cfg)  # jax.eval_shape of the model's init
    assert accounting.count_params(cfg) == (_numel(params), _active_from_tree(cfg, params))
    for k in range(2):
        spec = _sliced_spec(cfg, 10 * seed + k)
        assert not spec.is_full(cfg)
        sliced = jax.eval_shape(lambda p, spec=spec: slice_params(p, cfg, spec)[0], params)
        sub = spec.apply_to(cfg)
        assert accounting.count_params(sub) == (_numel(sliced), _active_from_tree(sub, sliced))
        assert accounting.weight_bytes(sub, "float32") == _numel(sliced) * 4
        assert accounting.count_params(sub) == (_numel(ej.param_shapes(sub)), _active_from_tree(sub, sliced))

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
    bias = accounting.correction_bias_count(nano)
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

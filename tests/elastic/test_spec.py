"""ElasticSpec and Budget: nesting, the nested config, JSON storage, and one clear error per kind of bad input."""

from __future__ import annotations

import json

import pytest

import elastic_jax as ej
from elastic_jax.elastic import Budget, ElasticError, ElasticSpec
from tests.model.helpers import PARITY_CONFIGS

CFG = PARITY_CONFIGS["all_blocks"]  # M * E -, 4 Mamba heads in 2 groups, 4 query / 2 KV heads, 8 experts top-2
GROUPED = PARITY_CONFIGS["grouped_routing"]  # 8 experts in 4 routing groups, top-3 from 2 groups


def test_full_spec_is_the_parent():
    assert ElasticSpec().apply_to(CFG) == CFG
    assert ElasticSpec().is_full(CFG)


def test_apply_to_shrinks_every_axis():
    spec = ElasticSpec(hidden_size=16, mamba_num_heads=2, num_attention_heads=2, intermediate_size=20,
                       n_routed_experts=4, moe_intermediate_size=8, moe_shared_expert_intermediate_size=12,
                       layers=(0, 1, 2))
    sub = spec.apply_to(CFG)
    assert (sub.hidden_size, sub.pattern, sub.mamba_num_heads) == (16, "M*E", 2)
    assert (sub.num_attention_heads, sub.num_key_value_heads) == (2, 1)  # kv_groups: one whole KV group
    assert (sub.n_routed_experts, sub.moe_intermediate_size, sub.moe_shared_expert_intermediate_size) == (4, 8, 12)
    query = ElasticSpec(num_attention_heads=2, attention_mode="query_heads").apply_to(CFG)
    assert (query.num_attention_heads, query.num_key_value_heads) == (2, 2)  # one query head in each KV group


def test_heterogeneous_spec_gives_per_layer_widths():
    cfg = PARITY_CONFIGS["deep_mqa"]  # MM*-E*M
    spec = ElasticSpec(mamba_num_heads=(1, 2, 0, 0, 0, 0, 2), layers=(0, 1, 2, 3, 4, 6))
    sub = spec.apply_to(cfg)
    assert sub.pattern == "MM*-EM" and sub.mamba_num_heads == (1, 2, 2, 2, 2, 2) and not sub.is_homogeneous
    assert ElasticSpec(mamba_num_heads=(1, 1, 0, 0, 0, 0, 1)).apply_to(cfg).mamba_num_heads == 1


def test_json_roundtrip():
    spec = ElasticSpec(hidden_size=24, mamba_num_heads=(2, 4, 2, 2), layers=(0, 2, 3), attention_mode="query_heads")
    text = json.dumps(spec.to_dict())
    assert ElasticSpec.from_dict(json.loads(text)) == spec
    assert hash(ElasticSpec.from_dict(json.loads(text))) == hash(spec)


def test_from_fractions_rounds_to_valid_sizes():
    spec = ElasticSpec.from_fractions(CFG, {"hidden": 0.5, "mamba_heads": 0.3, "experts": 0.1, "ffn": 0.5})
    assert (spec.hidden_size, spec.mamba_num_heads, spec.n_routed_experts, spec.intermediate_size) == (16, 2, 2, 24)
    assert ElasticSpec.from_fractions(GROUPED, {"experts": 0.5}).n_routed_experts == 8  # 2 per group at least
    depth = ElasticSpec.from_fractions(CFG, {"depth": 0.5}, layer_order=[2, 0, 3, 1])
    assert depth.layers == (0, 2)


@pytest.mark.parametrize("spec, match", [
    (ElasticSpec(hidden_size=33), r"spec\.hidden_size: 33 is outside the allowed range 1\.\.32"),
    (ElasticSpec(mamba_num_heads=6), r"spec\.mamba_num_heads: layer 0: 6 .*multiples of 2 in 2\.\.4"),
    (ElasticSpec(mamba_num_heads=3), r"spec\.mamba_num_heads: layer 0: 3 .*equal prefix of each of the 2 B/C groups"),
    (ElasticSpec(num_attention_heads=3), r"spec\.num_attention_heads: layer 1: 3 .*whole KV groups of 2"),
    (ElasticSpec(num_attention_heads=1, attention_mode="query_heads"),
     r"spec\.num_attention_heads: layer 1: 1 .*each of 2 KV groups"),
    (ElasticSpec(intermediate_size=49), r"spec\.intermediate_size: layer 3: 49 .*1\.\.48"),
    (ElasticSpec(n_routed_experts=1), r"spec\.n_routed_experts: layer 2: 1 .*2\.\.8.*top-2"),
    (ElasticSpec(moe_intermediate_size=0), r"spec\.moe_intermediate_size: layer 2: 0 .*1\.\.16"),
    (ElasticSpec(layers=(0, 4)), r"spec\.layers: indices \[4\] are outside the allowed range 0\.\.3"),
    (ElasticSpec(layers=(2, 1)), r"spec\.layers: must be strictly increasing"),
    (ElasticSpec(layers=()), r"spec\.layers: must keep at least one layer"),
    (ElasticSpec(mamba_num_heads=(2, 2)), r"spec\.mamba_num_heads: a per-layer tuple needs one entry per parent layer"),
])
def test_spec_not_nested_in_parent(spec, match):
    with pytest.raises(ElasticError, match=match):
        spec.apply_to(CFG)


def test_grouped_routing_experts_keep_whole_groups():
    with pytest.raises(ElasticError, match=r"spec\.n_routed_experts: layer 1: 6 .*multiples of 4 in 8\.\.8"):
        ElasticSpec(n_routed_experts=6).apply_to(GROUPED)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attention_mode="heads"), r"spec\.attention_mode: must be one of \['kv_groups', 'query_heads'\]"),
    (dict(hidden_size=(8, 8)), r"spec\.hidden_size: is one value for the whole model"),
    (dict(intermediate_size=2.5), r"spec\.intermediate_size: must be an integer"),
])
def test_malformed_spec(kwargs, match):
    with pytest.raises(ElasticError, match=match):
        ElasticSpec(**kwargs)


def test_unknown_axis_and_field():
    with pytest.raises(ElasticError, match=r"unknown elastic axis 'heads'; allowed: \['hidden', 'mamba_heads'"):
        ElasticSpec.from_fractions(CFG, {"heads": 0.5})
    with pytest.raises(ElasticError, match=r"unknown elastic spec field\(s\) \['width'\]"):
        ElasticSpec.from_dict({"width": 3})
    with pytest.raises(ElasticError, match=r"fraction for axis 'ffn' must be in \(0, 1\]"):
        ElasticSpec.from_fractions(CFG, {"ffn": 1.5})
    with pytest.raises(ElasticError, match="depth fraction below 1 needs layer_order"):
        ElasticSpec.from_fractions(CFG, {"depth": 0.5})


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01, float("nan"), True])
def test_budget_fraction_out_of_range(fraction):
    with pytest.raises(ElasticError, match=r"budget\.fraction must be in \(0, 1\]"):
        Budget(fraction)


def test_budget_errors_and_measure():
    with pytest.raises(ElasticError, match=r"budget\.metric: unknown 'latency'; allowed: \['total_params'"):
        Budget(0.5, "latency")
    with pytest.raises(ElasticError, match=r"budget\.context must be a positive integer"):
        Budget(0.5, "memory", context=0)
    with pytest.raises(ElasticError, match=r"budget\.weight_dtype: unknown 'int3'"):
        Budget(0.5, weight_dtype="int3")
    with pytest.raises(ElasticError, match=r"budget 'active:x'"):
        Budget.parse("active:x")
    assert Budget.parse("active_params:0.6") == Budget(0.6, "active_params")
    assert Budget(0.5).target(CFG) == 0.5 * ej.count_params(CFG)[0]
    assert Budget(1.0, "active_params").measure(CFG) == ej.count_params(CFG)[1]

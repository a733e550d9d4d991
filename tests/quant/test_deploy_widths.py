"""Deployment alignment of a router's choice: widths snap to the runtime's multiple, stay prefixes of the parent."""

import pytest

import elastic_jax as ej
from elastic_jax.elastic.router.candidates import DEPLOY_MULTIPLE, deployment_spec
from elastic_jax.elastic.spec import ElasticSpec

CFG = ej.load_config("tiny")  # hidden 64, FFN 128, experts and shared expert 64


@pytest.mark.parametrize("target", sorted(DEPLOY_MULTIPLE))
def test_widths_snap_to_the_nearest_multiple_within_the_parent(target):
    m = DEPLOY_MULTIPLE[target]
    spec = ElasticSpec(hidden_size=44, intermediate_size=126, moe_intermediate_size=36,
                       moe_shared_expert_intermediate_size=(60,) * CFG.num_layers, n_routed_experts=6)
    out = deployment_spec(CFG, spec, m)
    assert out.n_routed_experts == 6  # whole groups are left alone
    for name, width, full in (("hidden_size", 44, 64), ("intermediate_size", 126, 128),
                              ("moe_intermediate_size", 36, 64)):
        got = getattr(out, name)
        assert got % m == 0 and got <= full and abs(got - width) <= m / 2, (name, got)
    assert all(w % m == 0 and w <= 64 for w in out.moe_shared_expert_intermediate_size)
    assert deployment_spec(CFG, ElasticSpec(moe_intermediate_size=36), 8).moe_intermediate_size == 40  # ties up
    assert deployment_spec(CFG, ElasticSpec(hidden_size=4), 16).hidden_size == 16  # never below one multiple

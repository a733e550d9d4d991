"""Rematerialisation and the scan over repeated layer groups change the program, not the values."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.elastic.slicing import spec_masks
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model.functional import build
from elastic_jax.model.hybrid import layer_segments
from elastic_jax.model.layer_groups import LayerExecution, LayerExecutionError, plan_segments
from elastic_jax.model.masks import Masks
from tests.model.helpers import PARITY_CONFIGS, random_params, random_tokens

# "ME" three times, then a dense MLP: one scanned pair plus a plain layer
CFG = dataclasses.replace(PARITY_CONFIGS["grouped_routing"], pattern="MEMEME-")
NANO = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


def test_segments_of_the_nano_pattern_compile_14_layer_bodies_instead_of_52():
    segments = plan_segments(list(NANO))
    assert [(s.start, s.unit, s.reps) for s in segments] == [(0, 7, 5), (35, 2, 3), (41, 1, 1), (42, 1, 1),
                                                            (43, 2, 4), (51, 1, 1)]
    covered = [layer for s in segments for r in range(s.reps) for layer in s.layers(r)]
    assert covered == list(range(len(NANO)))
    assert all(NANO[s.layers(r)[k]] == NANO[s.layers(0)[k]] for s in segments for r in range(s.reps)
               for k in range(s.unit))
    assert sum(s.unit for s in segments) == 14


def test_layers_of_different_widths_are_not_scanned_together():
    widths = tuple(8 if layer == 3 else 16 for layer in range(CFG.num_layers))  # MoE layer 3 is narrower
    cfg = dataclasses.replace(CFG, moe_intermediate_size=widths)
    same = [(s.start, s.unit, s.reps) for s in layer_segments(CFG, Masks(), scan=True)]
    segments = layer_segments(cfg, Masks(), scan=True)
    assert same == [(0, 2, 3), (6, 1, 1)] and [(s.start, s.unit, s.reps) for s in segments] != same
    for s in segments:
        for r in range(s.reps):
            assert [cfg.width("moe_intermediate_size", layer) for layer in s.layers(r)] == \
                [cfg.width("moe_intermediate_size", layer) for layer in s.layers(0)]


def test_bad_settings_are_named():
    with pytest.raises(LayerExecutionError, match="remat: 'all'; allowed: none, block, dots"):
        LayerExecution(remat="all")
    with pytest.raises(LayerExecutionError, match="scan_layers"):
        LayerExecution(scan_layers="yes")


def _loss(execution: LayerExecution, masks: Masks | None):
    model = build(CFG, execution=execution)
    tokens = jnp.asarray(random_tokens(CFG, batch=2, length=12, seed=3))

    def loss(params):
        logits = model.apply({"params": params}, tokens, masks=masks)[0]
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, seed=5)


@pytest.fixture(scope="module")
def masks():
    """A budget's hard masks with layer 2 dropped: the masks are scanned with the weights."""
    spec = ElasticSpec.from_fractions(CFG, {"mamba_heads": 0.5, "expert_ffn": 0.5, "experts": 0.75})
    kept = tuple(layer for layer in range(CFG.num_layers) if layer != 2)
    return jax.tree.map(jnp.asarray, spec_masks(CFG, dataclasses.replace(spec, layers=kept)))


@pytest.mark.parametrize("masked, executions", [
    (False, [LayerExecution(remat="dots", scan_layers=True)]),
    (True, [LayerExecution(scan_layers=True), LayerExecution(remat="block")]),
], ids=["plain", "masked"])
def test_scan_and_remat_give_the_plain_values_and_gradients(params, masks, masked, executions):
    masks = masks if masked else None
    (ref_loss, ref_logits), ref_grads = _loss(LayerExecution(), masks)(params)
    for execution in executions:
        (loss, logits), grads = _loss(execution, masks)(params)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0, err_msg=str(execution))
        np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=1e-6)
        for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads),
                                strict=True):
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4, err_msg=f"{execution} {jax.tree_util.keystr(path)}")


def test_the_scanned_program_holds_one_body_per_unit(params):
    tokens = jnp.asarray(random_tokens(CFG, batch=1, length=8, seed=4))
    scanned = build(CFG, moe_strategy="grouped", execution=LayerExecution(scan_layers=True))
    text = jax.jit(lambda p: scanned.apply({"params": p}, tokens)[0]).lower(params).as_text()
    unscanned = build(CFG, moe_strategy="grouped")
    plain = jax.jit(lambda p: unscanned.apply({"params": p}, tokens)[0]).lower(params).as_text()
    # the plain program has each MoE layer's expert loops (grouped on the CPU); the scanned one has them once
    assert text.count("stablehlo.while") < plain.count("stablehlo.while")
    assert len(text) < 0.7 * len(plain)

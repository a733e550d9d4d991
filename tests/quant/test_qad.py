"""Quantisation-aware distillation: the fake-quantised forward is the quantised-inference weights bit for bit, its
gradient is the identity (straight-through), and a few QAD steps on a tiny elastic checkpoint bring the quantised
budgets closer to the unquantised teacher; the result serves through `--quant` and resumes like any run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.elastic.spec import ElasticError
from elastic_jax.quant import fp8, nvfp4
from elastic_jax.quant.params import dequantize_params, flat_leaves, quantised_names, quantize_params
from elastic_jax.quant.qad import fake_quantize, fake_quantize_params, tensor_scale
from tests.elastic.helpers import fast_random_params
from tests.quant.test_params import CFG


def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).reshape(-1).view(np.uint32)


@pytest.fixture(scope="module")
def parent():
    params = fast_random_params(CFG, seed=5)
    leaves = flat_leaves(params)
    # a zero block, a negative zero, an outlier (the smallest block scales elsewhere) in quantised weights
    w = np.array(leaves["layers_2/mixer/up_proj"], np.float32)
    w[0, :16, 0], w[1, 3, 5], w[2, 0, 0] = 0.0, -0.0, 40.0
    leaves["layers_2/mixer/up_proj"] = w
    from elastic_jax.model.declare import unflatten

    return jax.tree.map(np.asarray, unflatten(leaves))


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_fake_quantised_forward_is_dequantised_quantisation_bit_for_bit(parent, fmt):
    """`fake_quantize_params` inside jit == `dequantize_params(quantize_params(...), float32)` on every leaf (NVIDIA's
    exclusions untouched, the fused Mamba in_proj parts sharing their scale)."""
    want = flat_leaves(dequantize_params(quantize_params(parent, CFG, fmt), jnp.float32))
    got = flat_leaves(jax.jit(lambda p: fake_quantize_params(p, CFG, fmt))(parent))
    names = set(quantised_names(CFG))
    assert {"layers_3/mixer/in_x/kernel", "layers_2/mixer/up_proj"} <= names
    for name, a in want.items():
        np.testing.assert_array_equal(_bits(got[name]), _bits(a), err_msg=name)
        if name not in names:
            np.testing.assert_array_equal(_bits(got[name]), _bits(flat_leaves(parent)[name]), err_msg=name)
    changed = [n for n in names if not np.array_equal(_bits(got[n]), _bits(flat_leaves(parent)[n]))]
    assert sorted(changed) == sorted(names)  # every quantised weight is really rounded


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_single_tensor_matches_the_host_encoder(fmt):
    """One weight with a zero block, -0, values far apart in magnitude: decode(encode(w)) of the numpy encoder."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 24)).astype(np.float32) * np.exp(rng.uniform(-12, 3, (64, 1))).astype(np.float32)
    w[:16, 0], w[16, 1], w[17, 2] = 0.0, -0.0, 1e4
    host = nvfp4.decode(nvfp4.encode(w, 0)) if fmt == "nvfp4" else fp8.decode(fp8.encode(w, 0))
    got = jax.jit(lambda x: fake_quantize(x, tensor_scale(jnp.max(jnp.abs(x)), fmt), 0, fmt))(w)
    np.testing.assert_array_equal(_bits(got), _bits(host))


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_gradient_is_the_identity(parent, fmt):
    """Straight-through: the vector-Jacobian product returns the cotangent unchanged for every weight, the quantised
    ones included (identity, not masked past saturation: the scales follow the weights)."""
    rng = np.random.default_rng(1)
    cot = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), parent)
    _, vjp = jax.vjp(lambda p: fake_quantize_params(p, CFG, fmt), parent)
    (grads,) = jax.jit(vjp)(cot)
    for name, g in flat_leaves(grads).items():
        np.testing.assert_array_equal(_bits(g), _bits(flat_leaves(cot)[name]), err_msg=name)


def test_saturated_value_passes_its_gradient():
    """NVFP4: s2 = 2688 / 2688 = 1; the second block's scale 51 / 6 = 8.5 rounds (ties to even) to E4M3 8, so 51 / 8 =
    6.375 saturates at 6 (decodes to 48); its gradient is still 1 (straight-through, unmasked)."""
    w = np.zeros((32, 1), np.float32)
    w[0, 0], w[16, 0], w[17, 0] = 2688.0, 51.0, -3.0
    fq = jax.jit(lambda x: fake_quantize(x, tensor_scale(jnp.max(jnp.abs(x)), "nvfp4"), 0, "nvfp4"))
    assert float(fq(w)[16, 0]) == 48.0
    g = jax.grad(lambda x: jnp.sum(fake_quantize(x, tensor_scale(jnp.max(jnp.abs(x)), "nvfp4"), 0, "nvfp4")
                                   * 3.0))(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(g), np.full(w.shape, 3.0, np.float32))


def test_format_errors(parent):
    with pytest.raises(ValueError, match="allowed"):
        fake_quantize_params(parent, CFG, "int4")
    from elastic_jax.train.qad import QADSettings

    with pytest.raises(ElasticError, match="--teacher"):
        QADSettings("nvfp4", teacher="self")
    with pytest.raises(ElasticError, match="--steps"):
        QADSettings("fp8", steps=0)
    with pytest.raises(ElasticError, match="--lr"):
        QADSettings("fp8", lr=-1.0)


@pytest.fixture(scope="module")
def qad_run(elastic_checkpoint, tmp_path_factory):
    """Four NVFP4 QAD steps of the shared tiny elastic checkpoint, a checkpoint every two steps. Its parent is
    random (near-uniform logits: quantisation alone moves them by a KL of ~1e-7, below what a few optimizer steps
    change), so the teacher is the parent, whose KL from the quantised budgets is large enough to measure."""
    from elastic_jax.train.qad import QADSettings, run_qad

    workdir = tmp_path_factory.mktemp("qad") / "run"
    settings = QADSettings("nvfp4", steps=4, lr=1e-3, teacher="parent", eval_batches=1, checkpoint_every=2)
    return workdir, settings, run_qad(elastic_checkpoint, workdir, settings)


def test_qad_steps_bring_the_quantised_student_closer_to_the_teacher(qad_run):
    """On held-out data the QAD students' KL to the unquantised teacher (the objective: the mean over budgets) is
    below post-training quantisation's; the table is written next to the checkpoints."""
    workdir, _, result = qad_run
    assert result["step"] == 4 and not result["preempted"] and result["resumed_from"] is None
    rows = result["budgets"]
    assert [r["budget"] for r in rows] == [1.0, 0.7, 0.4] and all(r["ptq_kd"] > 0 for r in rows)
    assert np.mean([r["qad_kd"] for r in rows]) < np.mean([r["ptq_kd"] for r in rows]), rows
    assert json.loads((workdir / "qad.json").read_text()) == rows


def test_qad_checkpoint_serves_through_the_quantised_inference_path(elastic_checkpoint, qad_run):
    """`--quant nvfp4` on the QAD checkpoint quantises its trained weights by the same rules: the engine's parent
    dequantises to exactly the fake-quantised weights QAD trained through; router and architectures unchanged."""
    from elastic_jax.checkpoint import load_params
    from elastic_jax.inference.load import load_engine
    from elastic_jax.model_io import read_metadata

    workdir, _, _ = qad_run
    trained = load_params(workdir / "checkpoints")
    engine = load_engine(workdir / "checkpoints", "nvfp4")
    want = flat_leaves(fake_quantize_params(trained["model"], engine.cfg, "nvfp4"))
    got = flat_leaves(dequantize_params(engine.params, jnp.float32))
    for name, a in want.items():
        np.testing.assert_array_equal(_bits(got[name]), _bits(a), err_msg=name)
    source = load_params(elastic_checkpoint)
    for name, a in flat_leaves(source["router"]).items():
        np.testing.assert_array_equal(np.asarray(flat_leaves(trained["router"])[name]), np.asarray(a), err_msg=name)
    meta, src = read_metadata(workdir / "checkpoints"), read_metadata(elastic_checkpoint)
    assert meta["elastic"]["specs"] == src["elastic"]["specs"]
    assert meta["qad"]["fmt"] == "nvfp4" and meta["qad"]["steps"] == 4


def test_qad_resumes_like_any_run(elastic_checkpoint, qad_run, tmp_path):
    """With its last checkpoint gone (a run killed after step 2), the same command resumes from step 2 and ends
    with the uninterrupted run's weights, bit for bit."""
    from elastic_jax.checkpoint import CheckpointMismatchError, load_params
    from elastic_jax.train.qad import run_qad
    from tests.train.helpers import assert_trees_equal

    workdir, settings, _ = qad_run
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    shutil.rmtree(broken / "checkpoints" / "4")
    result = run_qad(elastic_checkpoint, broken, settings)
    assert result["resumed_from"] == 2 and result["step"] == 4
    assert_trees_equal(load_params(broken / "checkpoints"), load_params(workdir / "checkpoints"))
    with pytest.raises(CheckpointMismatchError, match="lr"):  # a resume keeps the run's settings
        run_qad(elastic_checkpoint, broken, dataclasses.replace(settings, lr=settings.lr * 2))


def test_sizes_report_counts_the_encoded_bytes(parent):
    """`python -m elastic_jax.quant.sizes`: the quantised tensors' bytes are those of the encoded tree (NVFP4 at most
    0.3x their bf16 form), the whole checkpoint's those `planned_bytes` and `checkpoint_bytes` give."""
    from elastic_jax.quant.params import checkpoint_bytes
    from elastic_jax.quant.sizes import format_rows, size_rows

    rows = {r["format"]: r for r in size_rows(CFG)}
    for fmt, r in rows.items():
        q = flat_leaves(quantize_params(parent, CFG, fmt))
        assert r["tensor_bytes"] == sum(x.nbytes for n, x in q.items() if n in set(quantised_names(CFG)))
        assert r["checkpoint_bytes"] == checkpoint_bytes(quantize_params(parent, CFG, fmt))
        assert r["checkpoint_bf16_bytes"] == sum(np.size(x) for x in flat_leaves(parent).values()) * 2
    assert rows["nvfp4"]["tensor_bytes"] <= 0.3 * rows["nvfp4"]["tensor_bf16_bytes"]
    assert "nvfp4" in format_rows(list(rows.values()))

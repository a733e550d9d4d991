"""Quantised parameter trees: which weights are quantised, and slicing a quantised parent equals quantising the
slice with the parent's per-tensor scales, bit for bit (NVFP4 and FP8)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax import ModelConfig
from elastic_jax.elastic import ElasticSpec, slice_params
from elastic_jax.quant import fp8, nvfp4
from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array
from elastic_jax.quant.params import (
    checkpoint_bytes,
    default_excluded,
    dequantize_params,
    flat_leaves,
    per_tensor_scales,
    planned_bytes,
    quantised_names,
    quantize_params,
)
from elastic_jax.quant.slicing import slice_plan, slice_quantized
from tests.elastic.helpers import fast_random_params
from tests.model.helpers import PARITY_CONFIGS, random_tokens

# Every input axis a multiple of 16, and heads of 16 channels, so head / expert / neuron cuts keep whole blocks.
CFG = ModelConfig(vocab_size=64, hidden_size=64, pattern="M*EM-E", mamba_num_heads=4, mamba_head_dim=16,
                  mamba_n_groups=2, ssm_state_size=8, chunk_size=8, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=64, n_routed_experts=8, num_experts_per_tok=2,
                  moe_intermediate_size=32, moe_shared_expert_intermediate_size=32)
SPECS = [
    ElasticSpec(),
    ElasticSpec(hidden_size=48, mamba_num_heads=2, num_attention_heads=2, intermediate_size=32,
                moe_intermediate_size=16, moe_shared_expert_intermediate_size=16, n_routed_experts=4),
    ElasticSpec(hidden_size=32, attention_mode="query_heads", num_attention_heads=2, layers=(0, 1, 3, 5),
                moe_intermediate_size=(1, 1, 32, 1, 1, 16), intermediate_size=48),
]


@pytest.fixture(scope="module")
def parent():
    return fast_random_params(CFG, seed=3)


def _bits(a) -> np.ndarray:
    return np.asarray(a).reshape(-1).view(np.uint8)


def _assert_same(a, b, name):
    assert type(a) is type(b), name
    if isinstance(a, NVFP4Array):
        assert a.axis == b.axis, name
        np.testing.assert_array_equal(a.packed, b.packed, err_msg=name)
        np.testing.assert_array_equal(_bits(a.scale), _bits(b.scale), err_msg=name)
        assert np.float32(a.scale_2) == np.float32(b.scale_2), name
    elif isinstance(a, FP8Array):
        np.testing.assert_array_equal(_bits(a.data), _bits(b.data), err_msg=name)
        np.testing.assert_array_equal(a.weight_scale, b.weight_scale, err_msg=name)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_default_exclusions_follow_nvidia(parent):
    names = set(quantised_names(CFG))
    q = flat_leaves(quantize_params(parent, CFG, "nvfp4"))
    assert names == {n for n, x in q.items() if isinstance(x, NVFP4Array)}
    assert "lm_head/kernel" not in names and "layers_2/mixer/gate" not in names
    assert not any(n.startswith(("layers_0/", "layers_1/")) for n in names)  # Mamba before attention; attention
    assert {"layers_3/mixer/in_x/kernel", "layers_3/mixer/out_proj/kernel", "layers_2/mixer/up_proj",
            "layers_4/mixer/down_proj/kernel", "layers_5/mixer/shared_experts/up_proj/kernel"} <= names
    assert isinstance(q["layers_2/mixer/up_proj"], NVFP4Array) and q["layers_2/mixer/up_proj"].axis == 1
    assert q["embeddings/embedding"] is flat_leaves(parent)["embeddings/embedding"]
    assert "layers_1/mixer/*" in default_excluded(CFG)
    everything = set(quantised_names(CFG, excluded=["lm_head/*"]))
    assert "layers_1/mixer/q_proj/kernel" in everything and "layers_2/mixer/gate" in everything


def test_default_exclusions_per_block_kind():
    """MM*-E*M: the Mamba layer before attention and both attention layers stay whole in bf16; the MoE layer
    before attention keeps only its router; the other Mamba layers and the MLP are quantised."""
    cfg = PARITY_CONFIGS["deep_mqa"]
    candidates = set(quantised_names(cfg, excluded=["lm_head/*"])) | {"lm_head/kernel"}
    kept = candidates - set(quantised_names(cfg))
    whole = {n for n in candidates if n.startswith(("layers_1/", "layers_2/", "layers_5/"))}
    assert kept == {"lm_head/kernel", "layers_4/mixer/gate"} | whole
    assert "layers_1/mixer/in_x/kernel" in whole and "layers_2/mixer/o_proj/kernel" in whole


@pytest.mark.parametrize("fmt, per_channel", [("nvfp4", False), ("fp8", False), ("fp8", True)])
def test_slicing_the_quantised_parent_equals_quantising_the_slice(parent, fmt, per_channel):
    qparent = quantize_params(parent, CFG, fmt, per_channel=per_channel)
    qflat, scales = flat_leaves(qparent), per_tensor_scales(qparent)
    for spec in SPECS:
        qsub, sub_cfg = slice_quantized(qparent, CFG, spec)
        sub, sub_cfg2 = slice_params(parent, CFG, spec)
        assert sub_cfg == sub_cfg2
        got, plain = flat_leaves(qsub), flat_leaves(sub)
        assert set(got) == set(plain)
        for new, old, decl, _ in slice_plan(CFG, spec):
            q = qflat[old]
            if isinstance(q, NVFP4Array):
                want = nvfp4.encode(plain[new], decl.quant_in, scales[old])
            elif isinstance(q, FP8Array):
                sliced_scale = got[new].weight_scale  # per channel: the kept channels' parent scales
                if per_channel:
                    full = slice_params(_broadcast_scales(parent, qflat), CFG, spec)[0]
                    sliced_scale = np.take(flat_leaves(full)[new], [0], axis=decl.quant_in)
                want = fp8.encode(plain[new], decl.quant_in, per_channel, sliced_scale if per_channel
                                  else scales[old])
            else:
                want = plain[new]
            _assert_same(got[new], want, f"{spec} {new}")
        # the same through quantize_params with the parent's scales (same weights quantised)
        renamed = {new: old for new, old, _, _ in slice_plan(CFG, spec)}
        names = set(quantised_names(sub_cfg, excluded=["lm_head/*"]))
        keep_float = [n for n in names if not isinstance(got[n], (NVFP4Array, FP8Array))]
        if not per_channel:
            again = quantize_params(sub, sub_cfg, fmt, excluded=["lm_head/*", *keep_float],
                                    scales={n: scales[renamed[n]] for n in names if n not in keep_float})
            for n, x in flat_leaves(again).items():
                _assert_same(x, got[n], f"{spec} {n}")


def _broadcast_scales(params, qflat):
    """The float tree with each per-channel-quantised weight replaced by its scale broadcast to the weight's shape."""
    flat = flat_leaves(params)
    out = {n: np.broadcast_to(q.weight_scale, q.shape) if isinstance(q, FP8Array) else flat[n]
           for n, q in qflat.items()}
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), [out[n] for n in flat])


def test_a_cut_inside_a_block_is_refused(parent):
    qparent = quantize_params(parent, CFG, "nvfp4")
    with pytest.raises(ValueError, match="split 16-value blocks"):
        slice_quantized(qparent, CFG, ElasticSpec(hidden_size=40))
    slice_quantized(quantize_params(parent, CFG, "fp8"), CFG, ElasticSpec(hidden_size=40))  # fp8: any cut


def test_dequantised_parent_runs_and_the_checkpoint_shrinks(parent):
    tokens = random_tokens(CFG, 1, 8)
    reference = np.asarray(ej.apply(CFG, parent, tokens))
    q = quantize_params(parent, CFG, "fp8")
    logits = np.asarray(ej.apply(CFG, dequantize_params(q, np.float32), tokens))
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.95  # routing may flip on a random model
    for n, x in flat_leaves(dequantize_params(q, np.float32)).items():
        want = flat_leaves(q)[n]
        np.testing.assert_array_equal(x, fp8.decode(want) if isinstance(want, FP8Array) else want)
    everything = quantize_params(parent, CFG, "nvfp4", excluded=["lm_head/*"])
    full = checkpoint_bytes(parent)
    assert checkpoint_bytes(everything) < checkpoint_bytes(quantize_params(parent, CFG, "nvfp4")) < full
    assert checkpoint_bytes(everything) == planned_bytes(CFG, "nvfp4", ["lm_head/*"])
    assert checkpoint_bytes(q) == planned_bytes(CFG, "fp8")


def test_user_errors(parent):
    with pytest.raises(ValueError, match="allowed: \\['nvfp4', 'fp8'\\]"):
        quantize_params(parent, CFG, "int4")
    with pytest.raises(ValueError, match="match no quantisable weight"):
        quantize_params(parent, CFG, "fp8", excluded=["layers_9/*"])
    with pytest.raises(ValueError, match="per_channel"):
        quantize_params(parent, CFG, "nvfp4", per_channel=True)
    with pytest.raises(ValueError, match="not quantised weights"):
        quantize_params(parent, CFG, "nvfp4", scales={"lm_head/kernel": 1.0})
    odd = PARITY_CONFIGS["all_blocks"]  # shared expert width 24
    with pytest.raises(ValueError, match="shared_experts/down_proj/kernel"):
        quantize_params(fast_random_params(odd, seed=0), odd, "nvfp4")

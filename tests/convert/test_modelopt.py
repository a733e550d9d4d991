"""Model-Optimizer Hugging Face export of quantised budgets: names and dtypes of NVIDIA's layout, quantisation
config, and export -> import giving back the quantised arrays bit for bit."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.convert.hf_config import ConversionError
from elastic_jax.convert.modelopt import SafetensorsReader, export_modelopt, import_modelopt, input_scale
from elastic_jax.data.tokenizer import ByteTokenizer
from elastic_jax.quant.calibrate import input_amax
from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array
from elastic_jax.quant.params import QUANTISED, flat_leaves, quantize_params

CFG = ej.load_config("tiny")


@pytest.fixture(scope="module")
def parent():
    params = ej.init_params(CFG, 0)
    batches = [np.random.RandomState(i).randint(5, CFG.vocab_size, (2, 16)) for i in range(2)]
    return params, input_amax(CFG, params, batches)


def _tensors(path):
    reader = SafetensorsReader(path)
    return {k: reader(k) for k in reader.index}


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype.itemsize == 1 else a.view(np.uint32) if a.dtype.itemsize == 4 else a


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_export_import_is_bit_identical(parent, fmt, tmp_path):
    params, amax = parent
    q = quantize_params(params, CFG, fmt)
    out = export_modelopt(CFG, q, tmp_path / fmt, amax=amax, tokenizer=ByteTokenizer())
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == fmt.upper() and qc["group_size"] == 16
    assert "lm_head" in qc["exclude_modules"] and "backbone.layers.1.mixer.q_proj" in qc["exclude_modules"]
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == fmt.upper()
    t = _tensors(out)
    up = "backbone.layers.2.mixer.experts.3.up_proj"
    if fmt == "nvfp4":
        assert t[f"{up}.weight"].dtype == np.uint8 and t[f"{up}.weight"].shape == (64, 32)  # [out, in / 2]
        assert t[f"{up}.weight_scale"].dtype == ml_dtypes.float8_e4m3fn and t[f"{up}.weight_scale"].shape == (64, 4)
        assert t[f"{up}.weight_scale_2"].dtype == np.float32 and t[f"{up}.weight_scale_2"].shape == ()
    else:
        assert t[f"{up}.weight"].dtype == ml_dtypes.float8_e4m3fn and t[f"{up}.weight"].shape == (64, 64)
        assert t[f"{up}.weight_scale"].dtype == np.float32 and t[f"{up}.weight_scale"].shape == ()
    assert t[f"{up}.input_scale"] == input_scale(amax["layers_2/mixer/up_proj"], fmt)
    assert t["backbone.layers.3.mixer.in_proj.weight_scale"].dtype == (np.float32 if fmt == "fp8"
                                                                       else ml_dtypes.float8_e4m3fn)
    assert t["backbone.layers.1.mixer.q_proj.weight"].dtype == ml_dtypes.bfloat16  # excluded: bf16
    assert (out / "tokenizer.json").exists()

    cfg, back, scales = import_modelopt(out)
    assert cfg == CFG
    want, got = flat_leaves(q), flat_leaves(back)
    assert set(want) == set(got)
    for name, a in want.items():
        b = got[name]
        if isinstance(a, QUANTISED):
            assert type(a) is type(b) and a.axis == b.axis, name
            fields = ("packed", "scale", "scale_2") if isinstance(a, NVFP4Array) else ("data", "weight_scale")
            for f in fields:
                np.testing.assert_array_equal(_bits(getattr(a, f)), _bits(getattr(b, f)), err_msg=f"{name}.{f}")
            assert scales[name] == input_scale(amax[name], fmt), name
        else:
            np.testing.assert_array_equal(np.asarray(a, ml_dtypes.bfloat16).astype(np.float32), b, err_msg=name)
    if fmt == "fp8":
        assert isinstance(got["layers_2/mixer/up_proj"], FP8Array)


def test_export_needs_input_scales_and_one_format(parent, tmp_path):
    params, _ = parent
    with pytest.raises(ConversionError, match="no input_scale"):
        export_modelopt(CFG, quantize_params(params, CFG, "nvfp4"), tmp_path / "a")
    with pytest.raises(ConversionError, match="exactly one quantised format"):
        export_modelopt(CFG, jax.device_get(params), tmp_path / "b")
    assert not (tmp_path / "a").exists()


def test_quantize_once_then_export_budgets_equals_slicing_the_quantised_parent(elastic_checkpoint, tmp_path):
    """`quantize` then `export-hf --budget --quant`: the budget's tensors are the quantised parent's slice (parent
    scales and input scales kept), read back bit for bit; a float checkpoint exported with --quant gives the same."""
    from elastic_jax.cli import main
    from elastic_jax.elastic.router.candidates import deployment_spec
    from elastic_jax.inference.load import engine_parts
    from elastic_jax.quant.slicing import slice_quantized

    q = tmp_path / "q"
    assert main(["quantize", "--checkpoint", str(elastic_checkpoint), "--format", "nvfp4", "--out", str(q),
                 "--batches", "1"]) == 0
    engine, scales, fmt = engine_parts(q)
    assert fmt == "nvfp4" and scales
    for out, source in ((tmp_path / "a", q), (tmp_path / "b", elastic_checkpoint)):
        assert main(["export-hf", "--checkpoint", str(source), "--budget", "0.7", "--quant", "nvfp4",
                     "--out", str(out)]) == 0
        assert (out / "tokenizer.json").exists()
    spec = deployment_spec(engine.cfg, engine.arch(0.7).spec, 16)
    want, cfg = slice_quantized(engine.params, engine.cfg, spec)
    for out in (tmp_path / "a", tmp_path / "b"):
        got_cfg, got, _ = import_modelopt(out)
        assert got_cfg == cfg
        for name, a in flat_leaves(want).items():
            b = flat_leaves(got)[name]
            if isinstance(a, NVFP4Array):
                for f in ("packed", "scale", "scale_2"):
                    np.testing.assert_array_equal(_bits(getattr(a, f)), _bits(getattr(b, f)), err_msg=name)
    assert main(["export-hf", "--checkpoint", str(q), "--budget", "0.7", "--quant", "fp8",
                 "--out", str(tmp_path / "c")]) == 2  # stored in nvfp4: one error line


def test_engine_and_generate_serve_a_quantised_parent(elastic_checkpoint, capsys):
    """--quant: the engine holds the parent quantised (the memory report counts the encoded bytes) and each budget's
    program dequantises it inside the jit; greedy decoding runs at every budget."""
    from elastic_jax.cli import main
    from elastic_jax.inference.load import load_engine
    from elastic_jax.quant.params import checkpoint_bytes

    plain = load_engine(elastic_checkpoint)
    prompt = [plain.tokenizer.encode("(3+4)*2=<think>", add_bos=True)]
    for fmt in ("fp8", "nvfp4"):
        engine = load_engine(elastic_checkpoint, fmt)
        report = engine.memory_report([1.0])
        assert report["parent_weight_bytes"] == checkpoint_bytes(engine.params, 4)  # float leaves stay float32
        assert report["parent_weight_bytes"] < plain.memory_report([1.0])["parent_weight_bytes"]
        for budget in plain.budgets:
            out = np.asarray(engine.generate(prompt, budget, 4))
            assert out.shape[-1] == 4 and np.all(out < plain.cfg.vocab_size)
    assert main(["generate", "--checkpoint", str(elastic_checkpoint), "--budget", "0.7", "--quant", "nvfp4",
                 "--prompt", "1+1=", "--max-new-tokens", "4"]) == 0

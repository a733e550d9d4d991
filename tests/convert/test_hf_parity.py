"""Our model against transformers' NemotronHForCausalLM on the same weights (fp32, CPU, eager)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

import elastic_jax as ej
from tests.model.helpers import PARITY_CONFIGS, random_params, random_tokens

torch.manual_seed(0)


def load_hf(path) -> NemotronHForCausalLM:
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    return model.eval()


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def exported(request, tmp_path_factory):
    cfg = PARITY_CONFIGS[request.param]
    params = random_params(cfg, seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param)
    ej.to_hf(cfg, params, path, max_shard_bytes=20_000)  # force several shards + an index
    return cfg, params, path, load_hf(path)


def test_export_matches_transformers_logits(exported):
    cfg, params, path, model = exported
    assert (path / "model.safetensors.index.json").exists()
    tokens = random_tokens(cfg, batch=3, length=cfg.chunk_size * 2 + 5, seed=1)  # longer than chunk, not a multiple
    ours = np.asarray(ej.apply(cfg, params, tokens))
    theirs = hf_logits(model, tokens)
    assert np.abs(theirs).max() > 0.5, "logits should be of order 1 for the tolerance to be meaningful"
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_param_count_equals_transformers_numel(exported):
    cfg, _, _, model = exported
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers()
                                                             if n.endswith("e_score_correction_bias"))
    assert ej.count_params(cfg)[0] == numel


def test_greedy_generation_token_identical(exported):
    cfg, params, _, model = exported
    prompt = random_tokens(cfg, batch=2, length=7, seed=2)
    prompt[prompt == cfg.eos_token_id] = 3
    ours = ej.generate(cfg, params, prompt, max_new_tokens=32)
    with torch.no_grad():
        theirs = model.generate(torch.from_numpy(prompt.astype(np.int64)), max_new_tokens=32, do_sample=False,
                                eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_import_roundtrip_is_exact(exported):
    cfg, params, path, _ = exported
    cfg2, params2 = ej.from_hf(path)
    assert cfg2.pattern == cfg.pattern and cfg2.time_step_limit == cfg.time_step_limit
    tokens = random_tokens(cfg, 2, 9, seed=3)
    np.testing.assert_array_equal(np.asarray(ej.apply(cfg2, params2, tokens)),
                                  np.asarray(ej.apply(cfg, params, tokens)))


@pytest.mark.parametrize("name", ["all_blocks", "grouped_routing"])
def test_transformers_save_pretrained_imports(name, tmp_path):
    """A directory written by transformers itself (its own init and layout) imports and matches."""
    cfg = PARITY_CONFIGS[name]
    hf_cfg = NemotronHConfig(**{k: v for k, v in ej.convert.hf_config.config_to_hf(cfg).items()
                                if k not in ("architectures", "model_type", "dtype")})
    torch.manual_seed(1)
    model = NemotronHForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # make routing biases and norms non-trivial
        for pname, p in model.named_parameters():
            if pname.endswith(("norm.weight", "A_log", "D")):
                p.add_(0.2 * torch.randn_like(p))
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "nemotron_h"
    cfg2, params2 = ej.from_hf(tmp_path)
    tokens = random_tokens(cfg2, 2, cfg2.chunk_size + 3, seed=4)
    np.testing.assert_allclose(np.asarray(ej.apply(cfg2, params2, tokens)), hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_transformers_layout_export_loads(tmp_path):
    cfg = PARITY_CONFIGS["all_blocks"]
    params = random_params(cfg, seed=7)
    ej.to_hf(cfg, params, tmp_path, layout="transformers")
    tokens = random_tokens(cfg, 2, 11, seed=5)
    np.testing.assert_allclose(np.asarray(ej.apply(cfg, params, tokens)), hf_logits(load_hf(tmp_path), tokens),
                               atol=1e-4, rtol=0)

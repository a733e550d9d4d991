"""Bad input gets one clear exception naming the field and what is allowed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import elastic_jax as ej
from tests.model.helpers import PARITY_CONFIGS, random_params


def test_unknown_pattern_character():
    with pytest.raises(ej.ConfigError, match=r"model\.pattern.*\['X'\].*allowed"):
        ej.ModelConfig(pattern="M*XE")


def test_mamba_heads_not_divisible_by_groups():
    with pytest.raises(ej.ConfigError, match=r"model\.mamba_num_heads.*not divisible by mamba_n_groups=4"):
        ej.ModelConfig(mamba_num_heads=6, mamba_n_groups=4)


def test_attention_heads_not_divisible_by_kv_heads():
    with pytest.raises(ej.ConfigError, match=r"model\.num_attention_heads.*num_key_value_heads=3"):
        ej.ModelConfig(num_attention_heads=4, num_key_value_heads=3)


def test_top_k_above_expert_count():
    with pytest.raises(ej.ConfigError, match=r"model\.num_experts_per_tok"):
        ej.ModelConfig(n_routed_experts=4, num_experts_per_tok=5)


def test_token_id_outside_vocabulary():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = random_params(cfg)
    tokens = np.array([[1, 2, cfg.vocab_size]])
    with pytest.raises(ej.InputError, match=rf"token id {cfg.vocab_size}.*0\.\.{cfg.vocab_size - 1}"):
        ej.apply(cfg, params, tokens)
    with pytest.raises(ej.InputError, match="token id -1"):
        ej.generate(cfg, params, np.array([[-1, 3]]), 4)


def test_override_of_unknown_field():
    with pytest.raises(ej.ConfigError, match="unknown field 'model.hiden_size'"):
        ej.load_config("tiny", ["--config.model.hiden_size=8"])


def test_hf_directory_of_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ej.ConversionError, match="model_type='llama'.*expected model_type 'nemotron_h'"):
        ej.from_hf(tmp_path)


def test_hf_directory_with_a_missing_tensor(tmp_path):
    cfg = PARITY_CONFIGS["all_blocks"]
    ej.to_hf(cfg, random_params(cfg), tmp_path)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["backbone.layers.2.mixer.experts.3.down_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ej.ConversionError, match=r"missing tensor 'backbone\.layers\.2\.mixer\.experts\.3\.down_proj"):
        ej.from_hf(tmp_path)


def test_hf_tensor_of_the_wrong_shape(tmp_path):
    cfg = PARITY_CONFIGS["all_blocks"]
    ej.to_hf(cfg, random_params(cfg), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ej.ConversionError, match=r"layers_3.*has shape \(48, 32\); config.json implies \(64, 32\)"):
        ej.from_hf(tmp_path)

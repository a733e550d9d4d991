"""Translation between ModelConfig and a Hugging Face NemotronH config.json."""

from __future__ import annotations

import math
from typing import Any

from elastic_jax.config import HF_LAYER_TYPES, ConfigError, ModelConfig


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file, field or tensor and what was expected."""


_HF_TO_CHAR = {v: k for k, v in HF_LAYER_TYPES.items()}
_HF_TO_CHAR.update({"mamba": "M", "attention": "*"})

# HF config field aliases of older NemotronH configs -> current names
_ALIASES = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_chunk_size": "chunk_size",
            "mamba_dt_min": "time_step_min", "mamba_dt_max": "time_step_max", "mamba_dt_limit": "time_step_limit",
            "mamba_dt_init_floor": "time_step_floor", "mamba_conv_bias": "use_conv_bias"}

# features our model does not implement; each must have the value given here
_REQUIRED = {"tie_word_embeddings": False, "use_bias": False, "mlp_bias": False, "attention_bias": False,
             "mamba_proj_bias": False, "use_conv_bias": True, "moe_latent_size": None, "n_shared_experts": 1,
             "mamba_hidden_act": "silu", "mlp_hidden_act": "relu2"}


def _pattern_from_hf(hf: dict[str, Any]) -> str:
    if hf.get("layers_block_type"):
        types = hf["layers_block_type"]
        unknown = sorted({t for t in types if t not in _HF_TO_CHAR})
        if unknown:
            raise ConversionError(f"config.json: layers_block_type has unknown type(s) {unknown}; allowed: "
                                  f"{sorted(HF_LAYER_TYPES.values())}")
        return "".join(_HF_TO_CHAR[t] for t in types)
    if hf.get("hybrid_override_pattern"):
        return hf["hybrid_override_pattern"]
    raise ConversionError("config.json: neither layers_block_type nor hybrid_override_pattern is set")


def check_architecture(hf: dict[str, Any], where: str = "config.json") -> None:
    """Raise ConversionError unless this is a NemotronH causal LM config."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type != "nemotron_h" and "NemotronHForCausalLM" not in archs:
        raise ConversionError(f"{where}: model_type={model_type!r}, architectures={archs}; expected model_type "
                              "'nemotron_h' (NemotronHForCausalLM)")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a NemotronH config.json; raises ConversionError for features we do not support.

    The Mamba time-step floor follows transformers (dt clamped at time_step_min), so logits match it.
    """
    check_architecture(hf)
    hf = {_ALIASES.get(k, k): v for k, v in hf.items()}
    for field, allowed in _REQUIRED.items():
        if field in hf and hf[field] != allowed:
            raise ConversionError(f"config.json: {field}={hf[field]!r} is not supported; expected {allowed!r}")
    eos = hf.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    tmin = float(hf.get("time_step_min", 0.001))
    kwargs = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], pattern=_pattern_from_hf(hf),
        mamba_num_heads=hf.get("mamba_num_heads", 128), mamba_head_dim=hf.get("mamba_head_dim", 64),
        mamba_n_groups=hf.get("n_groups", 8), ssm_state_size=hf.get("ssm_state_size", 128),
        conv_kernel=hf.get("conv_kernel", 4), chunk_size=hf.get("chunk_size", 128),
        time_step_limit=(tmin, math.inf), time_step_min=max(tmin, 1e-6),
        time_step_max=float(hf.get("time_step_max", 0.1)), time_step_floor=float(hf.get("time_step_floor", 1e-4)),
        num_attention_heads=hf.get("num_attention_heads", 32),
        num_key_value_heads=hf.get("num_key_value_heads") or hf.get("num_attention_heads", 32),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf.get("num_attention_heads", 32),
        intermediate_size=hf.get("intermediate_size", 21504), n_routed_experts=hf.get("n_routed_experts", 8),
        num_experts_per_tok=hf.get("num_experts_per_tok", 2),
        moe_intermediate_size=hf.get("moe_intermediate_size", 7688),
        moe_shared_expert_intermediate_size=hf.get("moe_shared_expert_intermediate_size", 7688),
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)), n_group=hf.get("n_group", 1),
        topk_group=hf.get("topk_group", 1), norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        rescale_prenorm_residual=bool(hf.get("rescale_prenorm_residual", True)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
        bos_token_id=hf.get("bos_token_id") if hf.get("bos_token_id") is not None else 1,
        eos_token_id=eos if eos is not None else 2,
    )
    try:
        return ModelConfig(**kwargs)
    except ConfigError as err:
        raise ConversionError(f"config.json describes an invalid model: {err}") from err


# transformers needs time_step_min > 0 (it draws log-uniform dt at init); a floor of 1e-9 changes nothing
# unless softplus(dt) < 1e-9, i.e. a pre-activation below -20.7.
_ZERO_FLOOR = 1e-9


def config_to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """A transformers >= 5.3 NemotronH config.json for a homogeneous ModelConfig."""
    if not cfg.is_homogeneous:
        raise ConversionError("export: transformers' NemotronH needs the same widths in every layer of a kind; "
                              "this config has per-layer widths (slice a homogeneous budget to export it)")
    lo, hi = cfg.time_step_limit
    if math.isfinite(hi):
        raise ConversionError(f"export: model.time_step_limit upper bound {hi} cannot be expressed in transformers' "
                              "NemotronH (it clamps dt only from below); use (low, inf)")
    return {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "dtype": dtype,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "layers_block_type": [HF_LAYER_TYPES[c] for c in cfg.pattern], "num_hidden_layers": cfg.num_layers,
        "mamba_num_heads": cfg.uniform("mamba_num_heads"), "mamba_head_dim": cfg.mamba_head_dim,
        "n_groups": cfg.mamba_n_groups, "ssm_state_size": cfg.ssm_state_size, "conv_kernel": cfg.conv_kernel,
        "chunk_size": cfg.chunk_size, "expand": 2, "use_conv_bias": True, "use_bias": False,
        "mamba_proj_bias": False, "mamba_hidden_act": "silu", "mamba_ssm_cache_dtype": "float32",
        "time_step_min": lo if lo > 0 else _ZERO_FLOOR, "time_step_max": cfg.time_step_max,
        "time_step_floor": cfg.time_step_floor,
        "time_step_limit": [lo, hi],
        "num_attention_heads": cfg.uniform("num_attention_heads"),
        "num_key_value_heads": cfg.uniform("num_key_value_heads"), "head_dim": cfg.head_dim,
        "attention_bias": False, "attention_dropout": 0.0,
        "intermediate_size": cfg.uniform("intermediate_size"), "mlp_bias": False, "mlp_hidden_act": "relu2",
        "n_routed_experts": cfg.uniform("n_routed_experts"), "num_experts_per_tok": cfg.num_experts_per_tok,
        "moe_intermediate_size": cfg.uniform("moe_intermediate_size"),
        "moe_shared_expert_intermediate_size": cfg.uniform("moe_shared_expert_intermediate_size"),
        "n_shared_experts": 1, "routed_scaling_factor": cfg.routed_scaling_factor, "n_group": cfg.n_group,
        "topk_group": cfg.topk_group, "norm_topk_prob": cfg.norm_topk_prob,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "initializer_range": cfg.initializer_range,
        "rescale_prenorm_residual": cfg.rescale_prenorm_residual, "residual_in_fp32": False,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": False,
        "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "use_cache": True, "num_logits_to_keep": 1,
    }

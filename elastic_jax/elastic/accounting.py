"""Accounting for any model config from shapes alone: parameters (total, active per token), memory bytes
(weights + the decode cache generation allocates) and forward FLOPs per token.

The single source of the numbers that reports, the CLI, the budget search and the router's resource loss use;
a nested model's numbers are those of `spec.apply_to(cfg)`.
"""

from __future__ import annotations

from elastic_jax.config import ModelConfig
from elastic_jax.model.cache import cache_bytes

# Bytes per stored weight; e_score_correction_bias stays float32 whatever the weight dtype (as NVIDIA stores it).
WEIGHT_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}


def mixer_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active-per-token) parameters of one layer's mixer, excluding its pre-norm."""
    d = cfg.hidden_size
    kind = cfg.pattern[layer]
    if kind == "M":
        heads, p, gn = cfg.mamba_heads(layer), cfg.mamba_head_dim, cfg.mamba_n_groups * cfg.ssm_state_size
        d_inner = heads * p
        conv_dim = d_inner + 2 * gn
        total = (d * (2 * d_inner + 2 * gn + heads) + conv_dim * (cfg.conv_kernel + 1) + 3 * heads + d_inner
                 + d_inner * d)
        return total, total
    if kind == "*":
        q, kv = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
        total = d * cfg.head_dim * (2 * q + 2 * kv)
        return total, total
    if kind == "E":
        experts, width = cfg.width("n_routed_experts", layer), cfg.width("moe_intermediate_size", layer)
        shared = 2 * d * cfg.width("moe_shared_expert_intermediate_size", layer)
        router = d * experts + experts
        total = router + experts * 2 * d * width + shared
        active = router + cfg.num_experts_per_tok * 2 * d * width + shared
        return total, active
    total = 2 * d * cfg.width("intermediate_size", layer)
    return total, total


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active-per-token) parameters: embeddings + blocks (with norms) + norm_f + lm_head.

    Active counts the embedding table in full, as NVIDIA's figures for Nemotron 3 Nano do.
    """
    d = cfg.hidden_size
    total = active = 2 * cfg.vocab_size * d + d  # embeddings, lm_head, norm_f
    for layer in range(cfg.num_layers):
        t, a = mixer_params(cfg, layer)
        total += t + d
        active += a + d
    return total, active


def format_count(n: int) -> str:
    """31580000000 -> '31.58B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def correction_bias_count(cfg: ModelConfig) -> int:
    """Number of e_score_correction_bias entries (kept in float32 in every checkpoint)."""
    return sum(cfg.width("n_routed_experts", i) for i, c in enumerate(cfg.pattern) if c == "E")


def weight_bytes(cfg: ModelConfig, dtype: str = "bfloat16") -> int:
    """Bytes of all weights stored at `dtype` (routing correction biases in float32)."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {dtype!r} is unknown; allowed: {list(WEIGHT_DTYPES)}")
    total, _ = count_params(cfg)
    bias = correction_bias_count(cfg)
    return (total - bias) * WEIGHT_DTYPES[dtype] + bias * 4


def memory_bytes(cfg: ModelConfig, batch: int = 1, context: int = 4096, dtype: str = "bfloat16") -> int:
    """Weights at `dtype` + the KV cache, conv windows and SSM states that generation allocates for
    `batch` sequences of up to `context` tokens (elastic_jax.model.cache.init_cache)."""
    return weight_bytes(cfg, dtype) + cache_bytes(cfg, batch, context)


def mixer_flops(cfg: ModelConfig, layer: int, context: int) -> int:
    """Forward FLOPs for one token through one layer's mixer, attending to `context` positions.

    Matmuls count 2 per multiply-add over the active weights; attention adds QK^T and PV over the context;
    the Mamba scan counts its recurrent form (decay, outer-product update, readout: 3 multiply-adds per state
    element) and the depthwise convolution. Norms and activations are left out.
    """
    d, kind = cfg.hidden_size, cfg.pattern[layer]
    _, active = mixer_params(cfg, layer)
    if kind == "M":
        heads, p, gn = cfg.mamba_heads(layer), cfg.mamba_head_dim, cfg.mamba_n_groups * cfg.ssm_state_size
        d_inner = heads * p
        matmul = d * (2 * d_inner + 2 * gn + heads) + d_inner * d
        return 2 * matmul + 2 * cfg.conv_kernel * (d_inner + 2 * gn) + 6 * d_inner * cfg.ssm_state_size
    if kind == "*":
        q = cfg.width("num_attention_heads", layer)
        return 2 * active + 4 * q * cfg.head_dim * context
    if kind == "E":
        return 2 * (active - cfg.width("n_routed_experts", layer))  # the correction bias is an add, not a matmul
    return 2 * active


def flops_per_token(cfg: ModelConfig, context: int = 4096) -> int:
    """Forward FLOPs to produce one token at context length `context`: every mixer plus the lm_head
    (the embedding is a lookup)."""
    return sum(mixer_flops(cfg, i, context) for i in range(cfg.num_layers)) + 2 * cfg.hidden_size * cfg.vocab_size


def footprint(cfg: ModelConfig, batch: int = 1, context: int = 4096, dtype: str = "bfloat16") -> dict[str, int]:
    """Every accounting number of a config in one dict (for reports and the CLI)."""
    total, active = count_params(cfg)
    return {"total_params": total, "active_params": active, "weight_bytes": weight_bytes(cfg, dtype),
            "cache_bytes": cache_bytes(cfg, batch, context), "memory_bytes": memory_bytes(cfg, batch, context, dtype),
            "flops_per_token": flops_per_token(cfg, context)}

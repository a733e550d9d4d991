"""Parameter accounting (total and active per token) for any model config, from shapes alone.

The single source of the numbers that reports, the CLI and (later) the router's resource loss use.
"""

from __future__ import annotations

from elastic_jax.config import ModelConfig


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

"""Accounting for any model config from shapes alone: parameters (total, active per token), memory bytes
(weights + the decode cache generation allocates) and forward FLOPs per token.

The single source of the numbers that reports, the CLI, the budget search and the router's resource loss use;
a nested model's numbers are those of `spec.apply_to(cfg)`.
"""

from __future__ import annotations

import functools

from elastic_jax.config import ModelConfig
from elastic_jax.model.blocks import BLOCKS, is_routed, norm_declaration, numel, outer_declarations
from elastic_jax.model.cache import cache_bytes

# Bytes per stored weight; frozen routing buffers (the MoE correction bias) stay float32 whatever the weight dtype,
# as NVIDIA stores them.
WEIGHT_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}


def _mixer_counts(cfg: ModelConfig, layer: int, keep=lambda decl: True) -> tuple[int, int]:
    """(total, active-per-token) entries of the declarations of one layer's mixer that `keep` selects: each
    declaration's size at the layer's logical axis sizes; a per-expert weight counts top-k experts as active."""
    kind = BLOCKS[cfg.pattern[layer]]
    sizes = kind.sizes(cfg, layer)
    routed = {**sizes, **kind.routed_sizes(cfg, layer)} if kind.routed_sizes else sizes
    total = active = 0
    for decl in kind.structure(tuple(sizes)):
        if keep(decl):
            total += numel(decl, sizes)
            active += numel(decl, routed) if is_routed(decl) else numel(decl, sizes)
    return total, active


def mixer_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active-per-token) parameters of one layer's mixer, excluding its pre-norm."""
    return _mixer_counts(cfg, layer)


def _outer_params(cfg: ModelConfig) -> tuple[int, int]:
    """(embeddings + norm_f + lm_head, one block pre-norm) parameters."""
    sizes = {"vocab": cfg.vocab_size, "embed": cfg.hidden_size}
    structure = outer_declarations(dict.fromkeys(sizes, 1)).values()
    return sum(numel(d, sizes) for d in structure), numel(norm_declaration({"embed": 1}), sizes)


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active-per-token) parameters: embeddings + blocks (with norms) + norm_f + lm_head, counted from
    the weight declarations.

    Active counts the embedding table in full, as NVIDIA's figures for Nemotron 3 Nano do.
    """
    outer, norm = _outer_params(cfg)
    total = active = outer
    for layer in range(cfg.num_layers):
        t, a = mixer_params(cfg, layer)
        total += t + norm
        active += a + norm
    return total, active


def format_count(n: int) -> str:
    """31580000000 -> '31.58B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def float32_params(cfg: ModelConfig) -> int:
    """Entries of the frozen routing buffers (e_score_correction_bias), kept in float32 in every checkpoint."""
    def frozen(decl, layer: int) -> bool:
        return decl.name in BLOCKS[cfg.pattern[layer]].frozen

    return sum(_mixer_counts(cfg, i, functools.partial(frozen, layer=i))[0] for i in range(cfg.num_layers))


def weight_bytes(cfg: ModelConfig, dtype: str = "bfloat16") -> int:
    """Bytes of all weights stored at `dtype` (frozen routing buffers in float32)."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {dtype!r} is unknown; allowed: {list(WEIGHT_DTYPES)}")
    total, _ = count_params(cfg)
    kept = float32_params(cfg)
    return (total - kept) * WEIGHT_DTYPES[dtype] + kept * 4


def memory_bytes(cfg: ModelConfig, batch: int = 1, context: int = 4096, dtype: str = "bfloat16") -> int:
    """Weights at `dtype` + the KV cache, conv windows and SSM states that generation allocates for
    `batch` sequences of up to `context` tokens (elastic_jax.model.cache.init_cache)."""
    return weight_bytes(cfg, dtype) + cache_bytes(cfg, batch, context)


def mixer_flops(cfg: ModelConfig, layer: int, context: int) -> int:
    """Forward FLOPs for one token through one layer's mixer, attending to `context` positions.

    Products count 2 per multiply-add over the active weights a matmul contracts (the declarations with a
    quantisation input axis); the block kind adds what is not a weight product (attention's QK^T and PV over
    the context, the Mamba convolution and scan). Norms, biases and activations are left out.
    """
    kind = BLOCKS[cfg.pattern[layer]]
    _, products = _mixer_counts(cfg, layer, lambda decl: decl.quant_in is not None)
    return 2 * products + kind.extra_flops(kind.sizes(cfg, layer), context)


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

"""The pattern-driven Nemotron-H stack: embeddings, blocks `h = h + mixer(rmsnorm(h))`, norm_f, untied lm_head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.model.attention import Attention
from elastic_jax.model.mamba2 import Mamba2Mixer
from elastic_jax.model.mlp import MLP, dense
from elastic_jax.model.moe import MoE
from elastic_jax.model.norms import RMSNorm


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def make_mixer(cfg: ModelConfig, layer: int, *, ssd_impl: str = "auto", moe_impl: str = "auto") -> nn.Module:
    """The mixer module of `layer`, with that layer's (possibly per-layer) widths."""
    dtype, std = compute_dtype(cfg), cfg.initializer_range
    kind = cfg.pattern[layer]
    if kind == "M":
        return Mamba2Mixer(cfg.hidden_size, cfg.mamba_heads(layer), cfg.mamba_head_dim, cfg.mamba_n_groups,
                           cfg.ssm_state_size, cfg.conv_kernel, cfg.chunk_size, cfg.time_step_limit,
                           cfg.time_step_min, cfg.time_step_max, cfg.time_step_floor, cfg.layer_norm_epsilon,
                           cfg.num_layers if cfg.rescale_prenorm_residual else 1, ssd_impl, dtype, std, name="mixer")
    if kind == "*":
        return Attention(cfg.hidden_size, cfg.width("num_attention_heads", layer),
                         cfg.width("num_key_value_heads", layer), cfg.head_dim, dtype, std, name="mixer")
    if kind == "E":
        return MoE(cfg.hidden_size, cfg.width("n_routed_experts", layer), cfg.num_experts_per_tok,
                   cfg.width("moe_intermediate_size", layer), cfg.width("moe_shared_expert_intermediate_size", layer),
                   cfg.n_group, cfg.topk_group, cfg.norm_topk_prob, cfg.routed_scaling_factor, moe_impl, dtype, std,
                   name="mixer")
    return MLP(cfg.hidden_size, cfg.width("intermediate_size", layer), dtype, std, name="mixer")


class Block(nn.Module):
    """One residual block; returns (h, new layer cache)."""

    cfg: ModelConfig
    layer: int
    ssd_impl: str = "auto"
    moe_impl: str = "auto"

    @nn.compact
    def __call__(self, h: jax.Array, cache: dict | None = None, pos: jax.Array | None = None,
                 masks: dict | None = None, hidden_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None):
        """`masks`: this layer's elastic masks (see NemotronH); `hidden_mask`: the model's hidden-channel mask;
        `segment_ids`: packed documents, for the mixers that mix tokens (attention, Mamba)."""
        cfg, kind = self.cfg, self.cfg.pattern[self.layer]
        normed = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon, compute_dtype(cfg), name="norm")(h, hidden_mask)
        mixer = make_mixer(cfg, self.layer, ssd_impl=self.ssd_impl, moe_impl=self.moe_impl)
        if masks is None:
            if kind == "M":
                out, cache = mixer(normed, cache, segment_ids=segment_ids)
            elif kind == "*":
                out, cache = mixer(normed, cache, pos, segment_ids=segment_ids)
            else:
                out = mixer(normed)
            return h + out.astype(h.dtype), cache
        if kind == "M":
            out, cache = mixer(normed, cache, masks.get("mamba_heads"), segment_ids)
        elif kind == "*":
            out, cache = mixer(normed, cache, pos, masks.get("attention_heads"), segment_ids)
        elif kind == "E":
            out = mixer(normed, masks)
        else:
            out = mixer(normed, masks.get("ffn"))
        out = out.astype(h.dtype)
        if hidden_mask is not None:
            out = out * hidden_mask.astype(h.dtype)
        if masks.get("depth") is not None:
            out = out * masks["depth"].astype(h.dtype)
        return h + out, cache


class NemotronH(nn.Module):
    """tokens [batch, length] -> logits [batch, length, vocab] (float32), and the updated cache if one is given.

    The cache is {"pos": int32 scalar, "layers": [per-layer cache or None]} (see elastic_jax/model/cache.py).
    `masks` (optional, the elastic masked forward; see elastic_jax/elastic/slicing.py) is
    {"hidden": [hidden_size], "layers": [one dict per layer]} with float arrays, any key may be left out; a layer's
    dict holds "depth" (scalar gate on the mixer output) and the masks of its kind: "mamba_heads" [H],
    "attention_heads" [query heads], "ffn" [F], "experts" [E], "expert_ffn" [F_e], "shared_ffn" [F_s].
    `segment_ids` [batch, length] int (optional, no cache): packed documents numbered within each row; no token
    sees another document (attention masks it, the Mamba conv and state restart).
    """

    cfg: ModelConfig
    ssd_impl: str = "auto"
    moe_impl: str = "auto"

    @nn.compact
    def __call__(self, tokens: jax.Array, cache: dict | None = None, masks: dict | None = None,
                 segment_ids: jax.Array | None = None):
        cfg = self.cfg
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids: packed documents are for full-sequence passes; decode with a cache "
                             "runs one document per row")
        hidden_mask = None if masks is None else masks.get("hidden")
        layer_masks = [None] * cfg.num_layers if masks is None else masks.get("layers", [{}] * cfg.num_layers)
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                         embedding_init=nn.initializers.normal(cfg.initializer_range), name="embeddings")
        h = embed(tokens).astype(jnp.float32)  # residual stream kept in float32
        if hidden_mask is not None:
            h = h * hidden_mask.astype(h.dtype)
        pos = None if cache is None else cache["pos"]
        new_layers = []
        for layer in range(cfg.num_layers):
            layer_cache = None if cache is None else cache["layers"][layer]
            block = Block(cfg, layer, self.ssd_impl, self.moe_impl, name=f"layers_{layer}")
            if masks is None:
                h, layer_cache = block(h, layer_cache, pos, segment_ids=segment_ids)
            else:
                h, layer_cache = block(h, layer_cache, pos, layer_masks[layer] or {}, hidden_mask, segment_ids)
            new_layers.append(layer_cache)
        h = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon, compute_dtype(cfg), name="norm_f")(h, hidden_mask)
        logits = dense(cfg.vocab_size, compute_dtype(cfg), "lm_head", cfg.initializer_range)(h).astype(jnp.float32)
        if cache is None:
            return logits, None
        return logits, {"pos": cache["pos"] + tokens.shape[1], "layers": new_layers}

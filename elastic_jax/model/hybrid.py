"""The pattern-driven Nemotron-H stack: embeddings, blocks `h = h + mixer(rmsnorm(h))`, norm_f, untied lm_head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.model.attention import Attention
from elastic_jax.model.declare import HF, ParamDecl, axis, declare, dim, linear, prefixed
from elastic_jax.model.layer_groups import PLAIN, LayerExecution, run_layers
from elastic_jax.model.mamba2 import Mamba2Mixer
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks, Masks
from elastic_jax.model.mlp import MLP
from elastic_jax.model.moe import MoE
from elastic_jax.model.norms import RMSNorm


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def make_mixer(cfg: ModelConfig, layer: int, *, ssd_impl: str = "auto", moe_impl: str = "auto",
               **module: Any) -> nn.Module:
    """The mixer module of `layer`, with that layer's (possibly per-layer) widths; `module` holds flax's
    name / parent (default: the submodule "mixer" of the module being built)."""
    module = {"name": "mixer", **module}
    kind, dtype = cfg.pattern[layer], compute_dtype(cfg)
    if kind == "M":
        return Mamba2Mixer.from_config(cfg, layer, dtype=dtype, ssd_impl=ssd_impl, **module)
    if kind == "*":
        return Attention.from_config(cfg, layer, dtype=dtype, **module)
    if kind == "E":
        return MoE.from_config(cfg, layer, dtype=dtype, impl=moe_impl, **module)
    return MLP.from_config(cfg, layer, dtype=dtype, **module)


NORM = dim(None, "embed")  # RMSNorm weights over the hidden channels stay replicated


def block_declarations(cfg: ModelConfig, layer: int) -> tuple[ParamDecl, ...]:
    """Layer `layer`'s parameters: its pre-norm and its mixer's (paths and HF names relative to the layer)."""
    norm = declare("norm/weight", (NORM,), {"embed": cfg.hidden_size}, HF("norm.weight", "vector"))
    mixer = make_mixer(cfg, layer, name=None, parent=None)  # unbound: a description, not a submodule
    return (norm, *prefixed(mixer.declarations(), "mixer"))


def _outer_declarations(cfg: ModelConfig) -> dict[str, ParamDecl]:
    """The embedding table, the final norm and the untied read-out."""
    sizes = {"vocab": cfg.vocab_size, "embed": cfg.hidden_size}
    embed, vocab = axis("embed"), axis("vocab")
    return {"embeddings": declare("embeddings/embedding", (vocab, embed), sizes, HF("embeddings.weight", "vector")),
            "norm_f": declare("norm_f/weight", (NORM,), sizes, HF("norm_f.weight", "vector")),
            "lm_head": declare("lm_head/kernel", (embed, vocab), sizes, HF("lm_head.weight", root=True), quant_in=0)}


def model_declarations(cfg: ModelConfig) -> tuple[ParamDecl, ...]:
    """Every parameter of the model, in Hugging Face checkpoint order (HF names below the backbone prefix)."""
    outer = _outer_declarations(cfg)
    layers = [d for layer in range(cfg.num_layers)
              for d in prefixed(block_declarations(cfg, layer), f"layers_{layer}", f"layers.{layer}.")]
    return (outer["embeddings"], *layers, outer["norm_f"], outer["lm_head"])


class Block(nn.Module):
    """One residual block; returns (h, new layer cache)."""

    cfg: ModelConfig
    layer: int
    ssd_impl: str = "auto"
    moe_impl: str = "auto"

    @nn.compact
    def __call__(self, h: jax.Array, cache: dict | None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, hidden_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None):
        """`masks`: this layer's elastic masks (see model/masks.py); `hidden_mask`: the hidden-channel mask;
        `segment_ids`: packed documents, for the mixers that mix tokens (attention, Mamba)."""
        cfg = self.cfg
        norm = RMSNorm(dim=cfg.hidden_size, eps=cfg.layer_norm_epsilon, dtype=compute_dtype(cfg), name="norm")
        normed = norm(h, hidden_mask)
        mixer = make_mixer(cfg, self.layer, ssd_impl=self.ssd_impl, moe_impl=self.moe_impl)
        out, cache = mixer(normed, cache, pos, masks=masks, segment_ids=segment_ids)  # one interface for every kind
        out = out.astype(h.dtype)
        if hidden_mask is not None:
            out = out * hidden_mask.astype(h.dtype)
        if masks.depth is not None:
            out = out * masks.depth.astype(h.dtype)
        return h + out, cache


class NemotronH(nn.Module):
    """tokens [batch, length] -> logits [batch, length, vocab] (float32), and the updated cache if one is given.

    The cache is {"pos": int32 scalar, "layers": [per-layer cache or None]} (see elastic_jax/model/cache.py).
    `masks` (optional, the elastic masked forward): a `Masks` (elastic_jax/model/masks.py); its None fields
    compute the plain model. `segment_ids` [batch, length] int (optional, no cache): packed documents numbered
    within each row; no token sees another document (attention masks it, the Mamba conv and state restart).
    `execution`: rematerialisation and the scan over repeated layers of a pass without a cache
    (model/layer_groups.py); the parameters and the values are the same either way.
    """

    cfg: ModelConfig
    ssd_impl: str = "auto"
    moe_impl: str = "auto"
    execution: LayerExecution = PLAIN

    @nn.compact
    def __call__(self, tokens: jax.Array, cache: dict | None = None, masks: Masks | None = None,
                 segment_ids: jax.Array | None = None):
        cfg, decl = self.cfg, _outer_declarations(self.cfg)
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids: packed documents are for full-sequence passes; decode with a cache "
                             "runs one document per row")
        masks = Masks() if masks is None else masks
        init = nn.initializers.normal(cfg.initializer_range)
        vocab, width = decl["embeddings"].shape
        embed = nn.Embed(vocab, width, param_dtype=jnp.float32, embedding_init=init, name="embeddings")
        h = embed(tokens).astype(jnp.float32)  # residual stream kept in float32
        if masks.hidden is not None:
            h = h * masks.hidden.astype(h.dtype)
        pos = None if cache is None else cache["pos"]
        new_layers = []
        if cache is None and not self.execution.plain and not self.is_initializing():
            h = run_layers(cfg, self.variables["params"], h, masks, segment_ids, self.execution, self.ssd_impl,
                           self.moe_impl)
        else:
            for layer in range(cfg.num_layers):
                layer_cache = None if cache is None else cache["layers"][layer]
                block = Block(cfg=cfg, layer=layer, ssd_impl=self.ssd_impl, moe_impl=self.moe_impl,
                              name=f"layers_{layer}")
                h, layer_cache = block(h, layer_cache, pos, masks.layer(layer), masks.hidden, segment_ids)
                new_layers.append(layer_cache)
        norm_f = RMSNorm(dim=decl["norm_f"].shape[0], eps=cfg.layer_norm_epsilon, dtype=compute_dtype(cfg),
                         name="norm_f")
        h = norm_f(h, masks.hidden)
        logits = linear(decl["lm_head"], compute_dtype(cfg), init)(h).astype(jnp.float32)
        if cache is None:
            return logits, None
        return logits, {"pos": cache["pos"] + tokens.shape[1], "layers": new_layers}

"""The pattern-driven Nemotron-H stack: embeddings, blocks `h = h + mixer(rmsnorm(h))`, norm_f, untied lm_head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.blocks import BLOCKS, norm_declaration, outer_declarations
from elastic_jax.model.declare import ParamDecl, linear, prefixed
from elastic_jax.model.layer_groups import PLAIN, REMAT_POLICIES, LayerExecution, Segment, plan_segments
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks, Masks
from elastic_jax.model.norms import RMSNorm


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def make_mixer(cfg: ModelConfig, layer: int, *, ssd_impl: str = "auto", moe_strategy: str = "auto",
               target: CompileTarget = CompileTarget(), **module: Any) -> nn.Module:
    """The mixer module of `layer`, with that layer's (possibly per-layer) widths, for `target`; `module` holds
    flax's name / parent (default: the submodule "mixer" of the module being built)."""
    module = {"name": "mixer", "target": target, **module}
    kind, chosen = BLOCKS[cfg.pattern[layer]], {"ssd_impl": ssd_impl, "moe_strategy": moe_strategy}
    options = {field: chosen[option] for option, field in kind.options}
    return kind.mixer.from_config(cfg, layer, dtype=compute_dtype(cfg), **options, **module)


def block_declarations(cfg: ModelConfig, layer: int) -> tuple[ParamDecl, ...]:
    """Layer `layer`'s parameters: its pre-norm and its mixer's (paths and HF names relative to the layer)."""
    norm = norm_declaration({"embed": cfg.hidden_size})
    mixer = make_mixer(cfg, layer, name=None, parent=None)  # unbound: a description, not a submodule
    return (norm, *prefixed(mixer.declarations(), "mixer"))


def _outer_declarations(cfg: ModelConfig) -> dict[str, ParamDecl]:
    """The embedding table, the final norm and the untied read-out."""
    return outer_declarations({"vocab": cfg.vocab_size, "embed": cfg.hidden_size})


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
    moe_strategy: str = "auto"
    target: CompileTarget = CompileTarget()

    @nn.compact
    def __call__(self, h: jax.Array, cache: dict | None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, hidden_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None):
        """`masks`: this layer's elastic masks (see model/masks.py); `hidden_mask`: the hidden-channel mask;
        `segment_ids`: packed documents, for the mixers that mix tokens (attention, Mamba)."""
        cfg = self.cfg
        norm = RMSNorm(dim=cfg.hidden_size, eps=cfg.layer_norm_epsilon, dtype=compute_dtype(cfg), name="norm")
        normed = norm(h, hidden_mask)
        mixer = make_mixer(cfg, self.layer, ssd_impl=self.ssd_impl, moe_strategy=self.moe_strategy, target=self.target)
        out, cache = mixer(normed, cache, pos, masks=masks, segment_ids=segment_ids)  # one interface for every kind
        out = out.astype(h.dtype)
        if hidden_mask is not None:
            out = out * hidden_mask.astype(h.dtype)
        if masks.depth is not None:
            out = out * masks.depth.astype(h.dtype)
        return h + out, cache


def _layer_signature(cfg: ModelConfig, layer: int, masks: LayerMasks) -> tuple:
    """What must agree for two layers to share one scanned body: kind, parameter shapes, mask shapes."""
    params = tuple((d.path, d.shape) for d in block_declarations(cfg, layer))
    leaves, tree = jax.tree.flatten(masks)
    return cfg.pattern[layer], params, tree, tuple((jnp.shape(m), jnp.result_type(m)) for m in leaves)


def layer_segments(cfg: ModelConfig, masks: Masks, scan: bool) -> list[Segment]:
    """The stack as single layers and scanned repeats of a unit (model/layer_groups.py)."""
    if not scan:
        return [Segment(i, 1, 1) for i in range(cfg.num_layers)]
    return plan_segments([_layer_signature(cfg, i, masks.layer(i)) for i in range(cfg.num_layers)])


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_layers(cfg: ModelConfig, params: dict, h: jax.Array, masks: Masks, segment_ids: jax.Array | None,
               execution: LayerExecution, **block: Any) -> jax.Array:
    """The residual stream after every block, as NemotronH's plain loop computes it (`params`: the model's), with
    `execution`'s rematerialisation and layer scan; `block`: the Blocks' other fields."""
    policy = REMAT_POLICIES[execution.remat]

    def block_fn(layer: int) -> Callable:
        module = Block(cfg=cfg, layer=layer, **block)

        def apply(p: dict, x: jax.Array, m: LayerMasks) -> jax.Array:
            return module.apply({"params": p}, x, None, None, m, masks.hidden, segment_ids)[0]

        return apply if policy is None else jax.checkpoint(apply, policy=policy)

    for seg in layer_segments(cfg, masks, execution.scan_layers):
        fns = [block_fn(layer) for layer in seg.layers(0)]
        if seg.reps == 1:
            for fn, layer in zip(fns, seg.layers(0)):
                h = fn(params[f"layers_{layer}"], h, masks.layer(layer))
            continue
        stacked = [_stack([params[f"layers_{seg.layers(r)[k]}"] for r in range(seg.reps)]) for k in range(seg.unit)]
        stacked_masks = [_stack([masks.layer(seg.layers(r)[k]) for r in range(seg.reps)]) for k in range(seg.unit)]

        def body(x: jax.Array, xs: tuple, fns: list[Callable] = fns) -> tuple[jax.Array, None]:
            for fn, p, m in zip(fns, *xs):
                x = fn(p, x, m)
            return x, None

        h, _ = jax.lax.scan(body, h, (stacked, stacked_masks))
    return h


class NemotronH(nn.Module):
    """tokens [batch, length] -> logits [batch, length, vocab] (float32), and the updated cache if one is given.

    The cache is {"pos": int32 scalar, "layers": [per-layer cache or None]} (see elastic_jax/model/cache.py).
    `masks` (optional, the elastic masked forward): a `Masks` (elastic_jax/model/masks.py); its None fields
    compute the plain model. `segment_ids` [batch, length] int (optional, no cache): packed documents numbered
    within each row; no token sees another document (attention masks it, the Mamba conv and state restart).
    `execution`: rematerialisation and the scan over repeated layers of a pass without a cache
    (model/layer_groups.py); the parameters and the values are the same either way. `target`: what the program
    is compiled for (kernels/target.py); `ssd_impl`, `moe_strategy`: the SSD scan's and the MoE layers' forms
    ("auto": chosen for the target and the shapes).
    """

    cfg: ModelConfig
    ssd_impl: str = "auto"
    moe_strategy: str = "auto"
    execution: LayerExecution = PLAIN
    target: CompileTarget = CompileTarget()

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
        block_fields = {"ssd_impl": self.ssd_impl, "moe_strategy": self.moe_strategy, "target": self.target}
        if cache is None and not self.execution.plain and not self.is_initializing():
            h = run_layers(cfg, self.variables["params"], h, masks, segment_ids, self.execution, **block_fields)
        else:
            for layer in range(cfg.num_layers):
                layer_cache = None if cache is None else cache["layers"][layer]
                block = Block(cfg=cfg, layer=layer, **block_fields, name=f"layers_{layer}")
                h, layer_cache = block(h, layer_cache, pos, masks.layer(layer), masks.hidden, segment_ids)
                new_layers.append(layer_cache)
        norm_f = RMSNorm(dim=decl["norm_f"].shape[0], eps=cfg.layer_norm_epsilon, dtype=compute_dtype(cfg),
                         name="norm_f")
        h = norm_f(h, masks.hidden)
        logits = linear(decl["lm_head"], compute_dtype(cfg), init, self.target)(h).astype(jnp.float32)
        if cache is None:
            return logits, None
        return logits, {"pos": cache["pos"] + tokens.shape[1], "layers": new_layers}

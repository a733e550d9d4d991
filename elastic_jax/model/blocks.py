"""The block kinds of a Nemotron-H pattern: one frozen record per pattern letter ('M', '*', 'E', '-').

A record says what the rest of the package needs to know about a kind beyond its weight declarations: its
mixer module and declaration function, the logical axis sizes of a layer from the config, its per-layer config
fields and elastic axes, the activations importance reads, which weights a token uses only when routed to them,
which weights are frozen routing buffers, which stay unquantised, and how llama.cpp names it. Parameter counts,
FLOPs, importance, spec validation, the optimiser's frozen labels, quantisation's default exclusions and the
GGUF export read these records and the declarations, so a new block kind is one record here and a new weight is
one declaration in its module.

`sizes(cfg, layer)` works on ModelConfig look-alikes whose widths are traced expected values (the router's
resource loss): a group count divides exactly there and with integer division on integers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from elastic_jax.model.attention import Attention, attention_declarations
from elastic_jax.model.declare import ELASTIC_AXES, HF, ParamDecl, axis, declare, dim
from elastic_jax.model.mamba2 import Mamba2Mixer, mamba_declarations
from elastic_jax.model.mlp import MLP, mlp_declarations
from elastic_jax.model.moe import ROUTED_ROWS, MoE, moe_declarations

Sizes = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation importance scores (METHOD §4): the `side` ("input" or "output") of the Linear at `path`
    inside the mixer, aggregated the Minitron way into the scores named `score` (an elastic axis, or another
    source for one). Channels of an item (a head's head_dim) are reduced by L2 per token when `token_l2`
    (a head scored by the norm of its output), else aggregated per channel and summed within the item.
    `groups_as`: also score the item axis's groups, as the L2 of their items, under that name."""

    score: str
    path: tuple[str, ...]
    side: str
    token_l2: bool = False
    groups_as: str | None = None


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """One pattern letter. Paths (`frozen`, `quant_excluded`) are relative to the layer's mixer."""

    letter: str
    mixer: type  # the flax module: `mixer.from_config(cfg, layer, ...)`
    declare: Callable[[Sizes], tuple[ParamDecl, ...]]  # the mixer's declarations from its logical axis sizes
    sizes: Callable[[Any, int], dict[str, Any]]  # logical axis sizes of the mixer of (cfg, layer)
    fields: tuple[str, ...]  # the config width fields that may vary per layer of this kind
    options: tuple[tuple[str, str], ...] = ()  # make_mixer's implementation choice -> the mixer's field for it
    importance: tuple[Activation, ...] = ()
    routed_rows: str | None = None  # what a routing mixer sows of the rows it routed (REAP scores them)
    routed_sizes: Callable[[Any, int], dict[str, Any]] | None = None  # a token's share of per-expert weights
    extra_flops: Callable[[Sizes, int], Any] = lambda sizes, context: 0  # FLOPs per token beyond the products
    frozen: tuple[str, ...] = ()  # routing buffers: not trained by gradients, kept float32 in every checkpoint
    quant_excluded: tuple[str, ...] = ()  # path patterns NVIDIA keeps unquantised
    quant_excluded_before: tuple[str, ...] = ()  # the whole mixer stays unquantised before a layer of these kinds
    gguf_arch: str | None = None  # the llama.cpp architecture a layer of this kind needs (None: either)
    gguf_layer: tuple[tuple[str, str], ...] = ()  # per-layer GGUF key -> the config field it holds here

    @property
    def elastic(self) -> tuple[str, ...]:
        """The elastic axes (other than hidden) whose config field this kind carries, in ELASTIC_AXES order."""
        return tuple(name for name, ea in ELASTIC_AXES.items() if ea.field in self.fields)

    @property
    def elastic_fields(self) -> tuple[str, ...]:
        return tuple(ELASTIC_AXES[name].field for name in self.elastic)

    def declarations(self, cfg: Any, layer: int) -> tuple[ParamDecl, ...]:
        """The mixer's declarations at (cfg, layer) (integer widths)."""
        return self.declare(self.sizes(cfg, layer))

    def structure(self, keys: tuple[str, ...]) -> tuple[ParamDecl, ...]:
        """The declarations' axes alone (every size 1): what counting evaluates at any sizes, traced ones too."""
        return _structure(self.letter, keys)


@functools.cache
def _structure(letter: str, keys: tuple[str, ...]) -> tuple[ParamDecl, ...]:
    return BLOCKS[letter].declare(dict.fromkeys(keys, 1))


def _per(whole: Any, parts: Any) -> Any:
    """whole / parts: exact on integers, a true division on traced expected widths."""
    return whole // parts if isinstance(whole, int) and isinstance(parts, int) else whole / parts


def numel(decl: ParamDecl, sizes: Sizes) -> Any:
    """The number of entries of `decl` at logical axis sizes `sizes` (ints, or traced values)."""
    return math.prod(sum(math.prod(sizes[a] for a in seg) for seg in d.segments) for d in decl.dims)


def _mamba_sizes(cfg: Any, layer: int) -> dict[str, Any]:
    groups = cfg.mamba_n_groups
    return {"embed": cfg.hidden_size, "mamba_groups": groups, "mamba_group_heads": _per(cfg.mamba_heads(layer), groups),
            "mamba_head_dim": cfg.mamba_head_dim, "ssm_state": cfg.ssm_state_size, "conv_width": cfg.conv_kernel}


def _mamba_flops(s: Sizes, context: int) -> Any:
    """The depthwise convolution over [x | B | C] and the recurrent scan (decay, outer-product update, readout:
    3 multiply-adds per state element)."""
    inner, bc = s["mamba_groups"] * s["mamba_group_heads"] * s["mamba_head_dim"], s["mamba_groups"] * s["ssm_state"]
    return 2 * s["conv_width"] * (inner + 2 * bc) + 6 * inner * s["ssm_state"]


def _attention_sizes(cfg: Any, layer: int) -> dict[str, Any]:
    kv = cfg.width("num_key_value_heads", layer)
    return {"embed": cfg.hidden_size, "kv_heads": kv, "q_per_kv": _per(cfg.width("num_attention_heads", layer), kv),
            "head_dim": cfg.head_dim}


def _attention_flops(s: Sizes, context: int) -> Any:
    """QK^T and PV over `context` positions."""
    return 4 * s["kv_heads"] * s["q_per_kv"] * s["head_dim"] * context


def _moe_sizes(cfg: Any, layer: int) -> dict[str, Any]:
    return {"embed": cfg.hidden_size, "routing_groups": cfg.n_group,
            "group_experts": _per(cfg.width("n_routed_experts", layer), cfg.n_group),
            "expert_mlp": cfg.width("moe_intermediate_size", layer),
            "shared_mlp": cfg.width("moe_shared_expert_intermediate_size", layer)}


def _mlp_sizes(cfg: Any, layer: int) -> dict[str, Any]:
    return {"embed": cfg.hidden_size, "mlp": cfg.width("intermediate_size", layer)}


BLOCKS: dict[str, BlockKind] = {k.letter: k for k in (
    BlockKind("M", Mamba2Mixer, mamba_declarations, _mamba_sizes, ("mamba_num_heads",), (("ssd_impl", "ssd_impl"),),
              importance=(Activation("mamba_heads", ("in_x",), "output"),
                          Activation("mamba_heads_out", ("out_proj",), "input")),
              extra_flops=_mamba_flops, quant_excluded_before=("*",)),
    BlockKind("*", Attention, attention_declarations, _attention_sizes,
              ("num_attention_heads", "num_key_value_heads"),
              importance=(Activation("attention_heads", ("o_proj",), "input", token_l2=True, groups_as="kv_groups"),),
              extra_flops=_attention_flops, quant_excluded=("*",),
              gguf_layer=(("head_count_kv", "num_key_value_heads"),)),
    BlockKind("E", MoE, moe_declarations, _moe_sizes,
              ("n_routed_experts", "moe_intermediate_size", "moe_shared_expert_intermediate_size"),
              (("moe_strategy", "strategy"),),
              importance=(Activation("shared_ffn", ("shared_experts", "down_proj"), "input"),),
              routed_rows=ROUTED_ROWS,
              routed_sizes=lambda cfg, layer: {"routing_groups": 1, "group_experts": cfg.num_experts_per_tok},
              frozen=("e_score_correction_bias",), quant_excluded=("gate",), gguf_arch="nemotron_h_moe",
              gguf_layer=(("feed_forward_length", "moe_intermediate_size"),)),
    BlockKind("-", MLP, mlp_declarations, _mlp_sizes, ("intermediate_size",),
              importance=(Activation("ffn", ("down_proj",), "input"),), gguf_arch="nemotron_h",
              gguf_layer=(("feed_forward_length", "intermediate_size"),)),
)}


def kind_of(cfg: Any, layer: int) -> BlockKind:
    return BLOCKS[cfg.pattern[layer]]


def kind_of_axis(name: str) -> str:
    """The letter of the block kind that carries elastic axis `name` (e.g. "shared_ffn" -> "E")."""
    return next(letter for letter, kind in BLOCKS.items() if name in kind.elastic)


def is_routed(decl: ParamDecl) -> bool:
    """A per-expert weight (stored one tensor per expert): a token uses only the experts routed to it."""
    return decl.hf.layout == "experts"


def frozen_names() -> tuple[str, ...]:
    """The leaf names of every kind's frozen routing buffers."""
    return tuple(sorted({path.split("/")[-1] for kind in BLOCKS.values() for path in kind.frozen}))


# ---- the parameters outside the blocks, and each block's pre-norm ---------------------------------------------
NORM = dim(None, "embed")  # RMSNorm weights over the hidden channels stay replicated


def norm_declaration(sizes: Sizes) -> ParamDecl:
    """A block's pre-norm (path and HF name relative to the layer)."""
    return declare("norm/weight", (NORM,), sizes, HF("norm.weight", "vector"))


def outer_declarations(sizes: Sizes) -> dict[str, ParamDecl]:
    """The embedding table, the final norm and the untied read-out (sizes: "vocab", "embed")."""
    embed, vocab = axis("embed"), axis("vocab")
    return {"embeddings": declare("embeddings/embedding", (vocab, embed), sizes, HF("embeddings.weight", "vector")),
            "norm_f": declare("norm_f/weight", (NORM,), sizes, HF("norm_f.weight", "vector")),
            "lm_head": declare("lm_head/kernel", (embed, vocab), sizes, HF("lm_head.weight", root=True), quant_in=0)}


__all__ = ["BLOCKS", "NORM", "Activation", "BlockKind", "frozen_names", "is_routed", "kind_of", "kind_of_axis",
           "norm_declaration", "numel", "outer_declarations"]

"""Model configuration: one frozen, hashable, validated value that every module and tool reads.

Width fields may be a single int (every layer of that kind) or a per-layer tuple (one entry per layer,
the entry of a layer of another kind is ignored): heterogeneous nested models are the same modules
built from a config whose per-layer widths are smaller.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from elastic_jax import schema
from elastic_jax.schema import ConfigError

BLOCK_TYPES = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}
HF_LAYER_TYPES = {"M": "linear_attention", "*": "full_attention", "E": "moe", "-": "mlp"}
COMPUTE_DTYPES = ("float32", "bfloat16")

# Width fields that may be per layer, and the block character whose layers use them.
PER_LAYER_FIELDS = {
    "mamba_num_heads": "M",
    "num_attention_heads": "*",
    "num_key_value_heads": "*",
    "intermediate_size": "-",
    "n_routed_experts": "E",
    "moe_intermediate_size": "E",
    "moe_shared_expert_intermediate_size": "E",
}


IntOrTuple = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelConfig(schema.Section):
    """Shape and numerics of a Nemotron-H hybrid model (Mamba-2 `M`, attention `*`, MoE `E`, MLP `-`)."""

    SECTION = "model"

    vocab_size: int = 256  #: rows of the embedding and the LM head
    hidden_size: int = 64  #: width of the residual stream
    pattern: str = "M*E-"  #: one character per layer: M Mamba-2, * attention, E MoE, - dense MLP
    # Mamba-2
    mamba_num_heads: IntOrTuple = 4  #: Mamba-2 heads (an int, or one per layer)
    mamba_head_dim: int = 16  #: channels per Mamba-2 head
    mamba_n_groups: int = 2  #: B/C groups; the heads of a group share B and C
    ssm_state_size: int = 16  #: SSM state size N per head
    conv_kernel: int = 4  #: width of the causal depthwise convolution
    chunk_size: int = 16  #: chunk length of the SSD scan
    time_step_limit: tuple[float, float] = (0.001, math.inf)  #: clamp (low, high) of the time step dt
    time_step_min: float = 0.001  #: smallest initial dt (log-uniform init)
    time_step_max: float = 0.1  #: largest initial dt
    time_step_floor: float = 1e-4  #: lower bound of the initial dt
    # attention
    num_attention_heads: IntOrTuple = 4  #: query heads (an int, or one per layer)
    num_key_value_heads: IntOrTuple = 2  #: key/value heads (GQA groups)
    head_dim: int = 16  #: channels per attention head
    # dense MLP
    intermediate_size: IntOrTuple = 128  #: width of dense MLP layers
    # MoE
    n_routed_experts: IntOrTuple = 8  #: routed experts per MoE layer
    num_experts_per_tok: int = 2  #: experts per token (top-k)
    moe_intermediate_size: IntOrTuple = 32  #: width of each routed expert
    moe_shared_expert_intermediate_size: IntOrTuple = 64  #: width of the shared expert
    routed_scaling_factor: float = 1.0  #: factor on the routed experts' weights
    n_group: int = 1  #: expert groups for group-limited routing
    topk_group: int = 1  #: groups a token may route into
    norm_topk_prob: bool = True  #: renormalise top-k weights to sum to 1
    # numerics and special tokens
    layer_norm_epsilon: float = 1e-5  #: epsilon of every RMSNorm
    initializer_range: float = 0.02  #: std of the normal initialiser
    rescale_prenorm_residual: bool = True  #: scale residual output projections by 1/sqrt(layers) at init
    max_position_embeddings: int = 4096  #: longest sequence accepted
    pad_token_id: int = 0  #: padding token
    bos_token_id: int = 1  #: beginning-of-sequence token
    eos_token_id: int = 2  #: end-of-sequence token
    compute_dtype: str = "float32"  #: dtype of activations and matmuls (float32 or bfloat16)

    def __post_init__(self):
        for name in PER_LAYER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.time_step_limit, list):
            object.__setattr__(self, "time_step_limit", tuple(float(v) for v in self.time_step_limit))
        validate(self)

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    def width(self, name: str, layer: int) -> int:
        """The value of a (possibly per-layer) width field at `layer`."""
        value = getattr(self, name)
        return value[layer] if isinstance(value, tuple) else value

    def mamba_heads(self, layer: int) -> int:
        return self.width("mamba_num_heads", layer)

    def mamba_d_inner(self, layer: int) -> int:
        return self.mamba_heads(layer) * self.mamba_head_dim

    @property
    def is_homogeneous(self) -> bool:
        """True when every layer of a kind has the same widths (what Hugging Face configs can express)."""
        for name, char in PER_LAYER_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, tuple):
                used = {v for v, c in zip(value, self.pattern) if c == char}
                if len(used) > 1:
                    return False
        return True

    def uniform(self, name: str) -> int:
        """The single value of a width field over the layers that use it (homogeneous configs only)."""
        value = getattr(self, name)
        if not isinstance(value, tuple):
            return value
        used = sorted({v for v, c in zip(value, self.pattern) if c == PER_LAYER_FIELDS[name]})
        if len(used) > 1:
            raise ConfigError(f"{name} differs between layers ({used}); this needs a homogeneous config")
        return used[0] if used else max(value)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)



def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(message, field, ModelConfig.SECTION)


def validate(cfg: ModelConfig) -> None:
    """Raise ConfigError naming the first invalid field and what is allowed."""
    _check(isinstance(cfg.pattern, str) and len(cfg.pattern) > 0, "pattern", "must be a non-empty string")
    bad = sorted({c for c in cfg.pattern if c not in BLOCK_TYPES})
    _check(not bad, "pattern", f"unknown block character(s) {bad}; allowed: 'M' (Mamba-2), '*' (attention), "
           "'E' (MoE), '-' (dense MLP)")
    for name in ("vocab_size", "hidden_size", "mamba_head_dim", "mamba_n_groups", "ssm_state_size",
                 "conv_kernel", "chunk_size", "head_dim", "num_experts_per_tok", "n_group", "topk_group",
                 "max_position_embeddings"):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value > 0, name, f"must be a positive integer, got {value!r}")
    for name, char in PER_LAYER_FIELDS.items():
        value = getattr(cfg, name)
        if isinstance(value, tuple):
            _check(len(value) == cfg.num_layers, name,
                   f"per-layer tuple must have one entry per layer ({cfg.num_layers}), got {len(value)}")
            values = [v for v, c in zip(value, cfg.pattern) if c == char]
        else:
            values = [value]
        for v in values:
            _check(isinstance(v, int) and v > 0, name, f"must be a positive integer, got {v!r}")
    _check(cfg.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"must be one of {COMPUTE_DTYPES}")
    lo, hi = cfg.time_step_limit
    _check(0.0 <= lo < hi, "time_step_limit", f"must be (low, high) with 0 <= low < high, got {cfg.time_step_limit}")
    _check(cfg.layer_norm_epsilon > 0, "layer_norm_epsilon", "must be > 0")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(cfg, name)
        _check(0 <= value < cfg.vocab_size, name, f"must be in [0, vocab_size={cfg.vocab_size}), got {value}")
    for layer, char in enumerate(cfg.pattern):
        if char == "M":
            heads = cfg.mamba_heads(layer)
            _check(heads % cfg.mamba_n_groups == 0, "mamba_num_heads",
                   f"layer {layer}: {heads} heads are not divisible by mamba_n_groups={cfg.mamba_n_groups}")
        elif char == "*":
            q, kv = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
            _check(q % kv == 0, "num_attention_heads",
                   f"layer {layer}: {q} query heads are not divisible by num_key_value_heads={kv}")
        elif char == "E":
            experts = cfg.width("n_routed_experts", layer)
            _check(cfg.num_experts_per_tok <= experts, "num_experts_per_tok",
                   f"layer {layer}: top-{cfg.num_experts_per_tok} needs at most n_routed_experts={experts}")
            _check(experts % cfg.n_group == 0, "n_group",
                   f"layer {layer}: n_routed_experts={experts} is not divisible by n_group={cfg.n_group}")
            _check(cfg.topk_group <= cfg.n_group, "topk_group",
                   f"must be <= n_group={cfg.n_group}, got {cfg.topk_group}")
            if cfg.n_group > 1:
                _check(experts // cfg.n_group >= 2, "n_group",
                       f"group-limited routing scores groups by their top-2 experts; layer {layer} has "
                       f"{experts // cfg.n_group} expert(s) per group")
                _check(cfg.topk_group * (experts // cfg.n_group) >= cfg.num_experts_per_tok, "topk_group",
                       f"layer {layer}: topk_group={cfg.topk_group} groups of {experts // cfg.n_group} experts "
                       f"cannot supply top-{cfg.num_experts_per_tok}")

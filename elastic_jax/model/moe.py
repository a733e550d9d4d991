"""Sigmoid-routed mixture of relu^2 experts with a shared expert (Nemotron-H's `E` layers).

Routing follows transformers' NemotronHTopkRouter: scores = sigmoid(x W^T) in float32; experts are
*chosen* by scores + e_score_correction_bias (optionally limited to the best `topk_group` of `n_group`
groups, a group scored by its two best experts); the chosen experts are *weighted* by their plain
scores, renormalised if `norm_topk_prob`, times `routed_scaling_factor`.

Expert compute is dropless, in one of three strategies that `choose_strategy` picks by the number of tokens
(model/experts.py has the forms): "grouped" (rows sorted by expert, each expert multiplying its own rows),
"gathered" (each row multiplied by its own expert's weights) and "dense" (every expert on every token).
Under a mesh whose `expert` axis splits the experts and the batch rows, "grouped" is expert-parallel: each
device keeps its slice of the experts and the routed rows travel to the devices that hold their experts and back
(model/expert_parallel.py); expert masks and static expert slices route as on one device (a slice whose expert
count the axis does not divide keeps every expert on every device).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.mesh import current_mesh
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.declare import HF, ParamDecl, axis, by_name, declare, declared_param, dim, prefixed
from elastic_jax.model.decode_views import DECODE_VIEWS
from elastic_jax.model.expert_parallel import across_experts, expert_axis
from elastic_jax.model.experts import (
    experts_dense,
    experts_gathered,
    experts_in_place,
    experts_ragged,
    experts_switched,
)
from elastic_jax.model.experts_looped import experts_looped
from elastic_jax.model.local_rows import on_local_rows
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks
from elastic_jax.model.mlp import MLP, mlp_declarations

STRATEGIES = ("auto", "grouped", "gathered", "dense")
GATHERED_SHARE = 4  # "gathered" while the routed rows are at most 1/4 of the experts (see choose_strategy)
DENSE_MAX_TOKENS = 32  # "dense" up to this many tokens (see choose_strategy)
ROUTED_ROWS = "routed_rows"  # what a MoE layer sows when "intermediates" is mutable: each routed (token, expert)
# row's expert hidden activations and output (before weighting), its routing weight, expert and token


def choose_strategy(tokens: int, top_k: int, num_experts: int) -> str:
    """The expert strategy for a call over `tokens` tokens (all the sequences of a vmapped program together).

    - "gathered" for one token (a decode step: its routed experts are read once, in place on the CPU decode kernels
      or the decode views), or while the routed rows are at most 1/GATHERED_SHARE of the experts;
    - "dense" up to DENSE_MAX_TOKENS tokens: every expert's weights are read once for all the tokens, and the extra
      arithmetic (experts / top_k times the routed rows) costs less than gathering copies or grouping;
    - "grouped" beyond (training, long prefills): the arithmetic is that of the routed rows.
    Measured with `python benchmarks/moe_strategies.py` (`small`'s shape: E=16, top-4, D=F=512, forward, XLA:CPU on
    the shared 2-core VM under heavy load, strategies in turns; time / fastest):
      tokens    1: gathered 1.00x, dense 1.41x, grouped 2.86x
      tokens    2: dense 1.00x, gathered 2.19x, grouped 4.46x
      tokens    4: dense 1.00x, grouped 2.36x, gathered 3.17x
      tokens    8: dense 1.00x, grouped 3.23x, gathered 8.16x
      tokens   16: dense 1.00x, grouped 1.77x, gathered 10.78x
      tokens   32: dense 1.00x, grouped 1.11x, gathered 7.74x
    At 32 tokens dense still led grouped by 1.11x and the gap was closing (3.23x at 8, 1.77x at 16), so dense stops
    at DENSE_MAX_TOKENS = 32; longer calls were not measured in that session.
    GPU / TPU were not measured; the same bounds apply there (grouped there is `lax.ragged_dot`).
    """
    if tokens == 1 or tokens * top_k * GATHERED_SHARE <= num_experts:
        return "gathered"
    return "dense" if tokens <= DENSE_MAX_TOKENS else "grouped"


def route(x: jax.Array, gate_w: jax.Array, bias: jax.Array, *, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float, expert_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Expert indices [T, k] and weights [T, k] (float32) for tokens x [T, D]; gate_w is [D, E].

    `expert_mask` [E] (optional): experts with mask <= 0 are not routing candidates (top-k unchanged, as if
    they had been removed); the chosen experts' final weights are multiplied by their mask value, so a soft
    mask scales an expert's contribution (and carries the gradient to whatever produced the mask).
    """
    logits = jnp.dot(x.astype(jnp.float32), gate_w.astype(jnp.float32), precision="highest")
    scores = jax.nn.sigmoid(logits)
    choice = scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
    if expert_mask is not None:
        choice = jnp.where(expert_mask > 0, choice, -jnp.inf)
    num_experts = choice.shape[-1]
    if n_group > 1:
        grouped = choice.reshape(-1, n_group, num_experts // n_group)
        group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)
        _, group_idx = jax.lax.top_k(group_scores, topk_group)
        rows = jnp.arange(group_scores.shape[0])[:, None]
        keep = jnp.zeros_like(group_scores, dtype=bool).at[rows, group_idx].set(True)
        keep = jnp.repeat(keep, num_experts // n_group, axis=-1)
        choice = jnp.where(keep, choice, -jnp.inf)
    _, idx = jax.lax.top_k(choice, top_k)
    weights = jnp.take_along_axis(scores, idx, axis=-1)
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    if expert_mask is not None:
        weights = weights * expert_mask.astype(jnp.float32)[idx]
    return idx, weights * scaling


def _sort_assignments(idx: jax.Array, num_experts: int):
    """Flatten [T, k] assignments and sort them by expert: (order, token of each row, rows per expert)."""
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token_of_row = order // idx.shape[1]
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return order, token_of_row, group_sizes


def _tensor_axis(expert_size: int) -> str | None:
    """The mesh axis that splits the expert width inside the per-device routing (as the weights are sharded,
    `expert_mlp` -> `tensor`), when the current mesh has one that divides it."""
    found = current_mesh()
    if found is None or "tensor" not in found[1]:
        return None
    size = found[0].shape["tensor"]
    return "tensor" if size > 1 and expert_size % size == 0 else None


def _sum_over(partial: jax.Array, axis: str | None) -> jax.Array:
    return partial if axis is None else jax.lax.psum(partial, axis)


EXPERTS = ("routing_groups", "group_experts")  # experts are routing-group major


def moe_declarations(sizes: dict[str, int]) -> tuple[ParamDecl, ...]:
    """The router (gate [embed, experts] and its correction bias), the experts as a leading axis of the stacked
    FFN kernels, and the shared expert's MLP."""
    embed, experts, ffn = axis("embed"), dim("experts", *EXPERTS), axis("expert_mlp")
    return (
        declare("gate", (embed, dim(None, *EXPERTS)), sizes, HF("gate.weight"), quant_in=0),
        declare("e_score_correction_bias", (dim(None, *EXPERTS),), sizes, HF("gate.e_score_correction_bias", "vector")),
        declare("up_proj", (experts, embed, ffn), sizes, HF("experts.up_proj", "experts"), quant_in=1),
        declare("down_proj", (experts, ffn, embed), sizes, HF("experts.down_proj", "experts"), quant_in=1),
        *prefixed(mlp_declarations(sizes, "shared_mlp"), "shared_experts"),
    )


class MoE(nn.Module):
    """Routed experts (stacked [E, in, out] kernels) plus one unweighted shared expert; `strategy` one of STRATEGIES
    ("auto": `choose_strategy`), in the forms of `target`."""

    hidden_size: int
    num_experts: int
    top_k: int
    expert_size: int
    shared_size: int
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    strategy: str = "auto"
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02
    target: CompileTarget = CompileTarget()

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer: int, *, dtype: jnp.dtype = jnp.float32, strategy: str = "auto",
                    **module: Any) -> MoE:
        """The MoE mixer of `layer` (its possibly per-layer expert count and widths)."""
        return cls(hidden_size=cfg.hidden_size, num_experts=cfg.width("n_routed_experts", layer),
                   top_k=cfg.num_experts_per_tok, expert_size=cfg.width("moe_intermediate_size", layer),
                   shared_size=cfg.width("moe_shared_expert_intermediate_size", layer), n_group=cfg.n_group,
                   topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
                   routed_scaling_factor=cfg.routed_scaling_factor, strategy=strategy, dtype=dtype,
                   init_std=cfg.initializer_range, **module)

    def declarations(self) -> tuple[ParamDecl, ...]:
        return moe_declarations({"embed": self.hidden_size, "routing_groups": self.n_group,
                                 "group_experts": self.num_experts // self.n_group, "expert_mlp": self.expert_size,
                                 "shared_mlp": self.shared_size})

    @nn.compact
    def __call__(self, x: jax.Array, cache: None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, segment_ids: jax.Array | None = None) -> tuple[jax.Array, None]:
        """(output, None); masks.experts [E], masks.expert_ffn [F] and masks.shared_ffn [F_shared] are optional.
        Tokens are routed one by one, so `segment_ids` (packed documents) changes nothing."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"MoE.strategy: {self.strategy!r}; allowed: {list(STRATEGIES)}")
        decl, init = by_name(self.declarations()), nn.initializers.normal(self.init_std)
        weights = (declared_param(self, decl["gate"], init),
                   declared_param(self, decl["e_score_correction_bias"], nn.initializers.zeros),
                   declared_param(self, decl["up_proj"], init), declared_param(self, decl["down_proj"], init),
                   masks.experts, masks.expert_ffn)
        tokens = x.size // self.hidden_size
        strategy = self.strategy
        if strategy == "auto":
            strategy = choose_strategy(tokens * max(1, self.target.sequences), self.top_k, self.num_experts)
        recording = self.is_mutable_collection("intermediates")  # importance reads every routed row, sorted
        strategy = "grouped" if recording else strategy
        in_place = self.target.row_kernels(x.reshape(-1, self.hidden_size), self.dtype) is not None
        if recording or in_place or (strategy == "gathered" and self.target.decode != "xla"):  # one device: no mesh
            routed = self._routed(x, *weights, strategy=strategy, recording=recording)
        else:
            tensor = _tensor_axis(self.expert_size)
            experts = expert_axis(self.num_experts, x.shape[0]) if strategy == "grouped" else None
            t = P(tensor) if tensor else P()
            specs = (P(), P(), P(experts, None, tensor), P(experts, tensor, None), P(), t)
            routed = on_local_rows(self._routed, x, weights, specs, strategy=strategy, tensor_axis=tensor,
                                   expert_axis=experts)
        return self._with_shared(x, routed, masks)

    def _routed(self, x: jax.Array, gate_w: jax.Array, bias: jax.Array, up: jax.Array, down: jax.Array,
                expert_mask: jax.Array | None, ffn_mask: jax.Array | None, *, strategy: str,
                tensor_axis: str | None = None, expert_axis: str | None = None, recording: bool = False) -> jax.Array:
        """The routed experts' weighted output [..., D] (float32) for tokens x [..., D]: route, then the experts in
        `strategy`'s form, weighted and added back to the tokens. With `tensor_axis`, up / down hold this device's
        slice of the expert width and the output is summed over it; with `expert_axis`, its slice of the experts,
        and the rows travel to their experts' devices and back."""
        tokens = x.reshape(-1, self.hidden_size)
        idx, weights = route(tokens, gate_w, bias, top_k=self.top_k, n_group=self.n_group,
                             topk_group=self.topk_group, norm_topk_prob=self.norm_topk_prob,
                             scaling=self.routed_scaling_factor, expert_mask=expert_mask)
        up, down = up.astype(self.dtype), down.astype(self.dtype)
        kernels = None if recording else self.target.row_kernels(tokens, self.dtype)
        if kernels is not None:  # the decode kernels' few tokens, whatever the strategy: each expert read once
            routed = experts_in_place(kernels, tokens, idx, weights, up, down, ffn_mask)
        elif strategy == "dense":
            routed = experts_dense(tokens.astype(self.dtype), idx, weights, up, down, ffn_mask)
        else:
            order, token_of_row, group_sizes = _sort_assignments(idx, self.num_experts)
            x_rows = tokens[token_of_row].astype(self.dtype)
            row_weights = weights.reshape(-1)[order]
            if recording:
                y_rows, hidden = experts_ragged(x_rows, group_sizes, up, down, ffn_mask)
                self.sow("intermediates", ROUTED_ROWS, {"hidden": hidden, "outputs": y_rows, "tokens": token_of_row,
                                                        "weights": row_weights, "experts": idx.reshape(-1)[order]})
            elif expert_axis is not None:
                y_rows = across_experts(x_rows, group_sizes,
                                        lambda rows, sizes: self._rows(rows, sizes, up, down, ffn_mask, strategy),
                                        top_k=self.top_k, axis=expert_axis, ragged=self.target.ragged_exchange)
            else:
                y_rows = self._rows(x_rows, group_sizes, up, down, ffn_mask, strategy)
            y_rows = y_rows.astype(jnp.float32) * row_weights[:, None]
            routed = jnp.zeros((tokens.shape[0], self.hidden_size), jnp.float32).at[token_of_row].add(y_rows)
        return _sum_over(routed, tensor_axis).reshape(x.shape)

    def _rows(self, x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
              ffn_mask: jax.Array | None, strategy: str) -> jax.Array:
        """The expert-sorted rows through their experts: "gathered" over decode views when the target reads them,
        else gathering; "grouped" as the block loop or ragged_dot, as the target says."""
        if strategy == "gathered" and self.target.views:  # no copies: see decode_views.py
            return experts_switched(x_rows, group_sizes, self.get_variable(DECODE_VIEWS, "up_proj"),
                                    self.get_variable(DECODE_VIEWS, "down_proj"), ffn_mask)
        if strategy == "gathered":
            return experts_gathered(x_rows, group_sizes, up, down, ffn_mask)
        if self.target.expert_loop:
            return experts_looped(x_rows, group_sizes, up, down, ffn_mask)
        return experts_ragged(x_rows, group_sizes, up, down, ffn_mask)[0]

    def _with_shared(self, x: jax.Array, routed: jax.Array, masks: LayerMasks) -> tuple[jax.Array, None]:
        shared, _ = MLP(hidden_size=self.hidden_size, intermediate_size=self.shared_size, dtype=self.dtype,
                        init_std=self.init_std, width_axis="shared_mlp", target=self.target,
                        name="shared_experts")(x, masks=masks)
        return (routed.reshape(x.shape).astype(self.dtype) + shared).astype(self.dtype), None


__all__ = ["DENSE_MAX_TOKENS", "GATHERED_SHARE", "MoE", "ROUTED_ROWS", "STRATEGIES", "choose_strategy",
           "moe_declarations", "route"]

"""Sigmoid-routed mixture of relu^2 experts with a shared expert (Nemotron-H's `E` layers).

Routing follows transformers' NemotronHTopkRouter: scores = sigmoid(x W^T) in float32; experts are
*chosen* by scores + e_score_correction_bias (optionally limited to the best `topk_group` of `n_group`
groups, a group scored by its two best experts); the chosen experts are *weighted* by their plain
scores, renormalised if `norm_topk_prob`, times `routed_scaling_factor`.

Expert compute is dropless: the (token, expert) assignments are sorted by expert and multiplied group by
group, either with `jax.lax.ragged_dot` (grouped GEMM on GPU/TPU) or, on CPU where ragged_dot lowers to a
dense product over every expert, with each expert looping over its own rows in fixed-size blocks
(`experts_looped.py`). The blocked and windowed forms are kept as explicit choices.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from elastic_jax.config import ModelConfig
from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.ssd._shard import current_mesh
from elastic_jax.kernels.ssd._target import backend as compile_target
from elastic_jax.kernels.ssd._target import host_experts
from elastic_jax.model.declare import HF, ParamDecl, axis, by_name, declare, declared_param, dim, prefixed
from elastic_jax.model.decode_views import DECODE_VIEWS
from elastic_jax.model.experts_looped import experts_looped
from elastic_jax.model.local_rows import on_local_rows
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks
from elastic_jax.model.mlp import MLP, mlp_declarations, relu2

MOE_IMPLS = ("auto", "ragged", "blocked", "windowed", "looped", "dense")
ROUTED_ROWS = "routed_rows"  # what a MoE layer sows when "intermediates" is mutable: each routed (token, expert)
# row's expert hidden activations and output (before weighting), its routing weight, expert and token


def _expert_of_row(group_sizes: jax.Array, rows: int) -> jax.Array:
    """The expert of each expert-sorted row [rows]."""
    return jnp.repeat(jnp.arange(group_sizes.shape[0]), group_sizes, total_repeat_length=rows)


def experts_switched(x_rows: jax.Array, group_sizes: jax.Array, ups: tuple, downs: tuple,
                     ffn_mask: jax.Array | None = None) -> jax.Array:
    """Grouped relu^2 FFN for a few expert-sorted rows (decode), each row multiplied by its expert's own arrays."""
    rows, num_experts = x_rows.shape[0], len(ups)
    expert_of_row = _expert_of_row(group_sizes, rows)
    mask = 1.0 if ffn_mask is None else ffn_mask.astype(x_rows.dtype)

    def branch(e):
        return lambda row: (relu2(row @ ups[e]) * mask).astype(row.dtype) @ downs[e]

    branches = [branch(e) for e in range(num_experts)]
    return jnp.concatenate([jax.lax.switch(expert_of_row[r], branches, x_rows[r:r + 1]) for r in range(rows)])


def experts_dense(tokens: jax.Array, idx: jax.Array, weights: jax.Array, up: jax.Array, down: jax.Array,
                  ffn_mask: jax.Array | None = None) -> jax.Array:
    """Routed output [T, D] (float32) computed by every expert for every token, the unchosen ones dropped.

    For batched decode under `vmap` (a token per sequence): the per-row paths gather each row's experts' weights
    (a copy of k expert matrices per sequence and step), while here every expert's weights are read once for the
    whole batch, the work of one [B, D] x [D, E*F] product."""
    # experts as the dots' batch axis: each product reads its expert's [in, out] weights as stored (a [T, D] x
    # [E, D, F] product without it transposes every weight on each call)
    x = jnp.broadcast_to(tokens, (up.shape[0], *tokens.shape))
    h = relu2(jnp.einsum("etd,edf->etf", x, up))
    if ffn_mask is not None:
        h = h * ffn_mask.astype(h.dtype)
    y = jnp.einsum("etf,efd->etd", h.astype(tokens.dtype), down).astype(jnp.float32)
    chosen = jnp.arange(up.shape[0])[:, None, None] == idx[None]  # [E, T, k]
    scale = jnp.sum(jnp.where(chosen, weights[None], 0.0), axis=2)  # [E, T]
    return jnp.sum(jnp.where(jnp.any(chosen, axis=2)[:, :, None], y * scale[:, :, None], 0.0), axis=0)


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


def experts_ragged_parts(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                         ffn_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(outputs [rows, D], hidden activations [rows, F]) of the grouped relu^2 FFN with lax.ragged_dot."""
    h = relu2(jax.lax.ragged_dot(x_rows, up, group_sizes))
    if ffn_mask is not None:
        h = h * ffn_mask.astype(h.dtype)
    return jax.lax.ragged_dot(h.astype(x_rows.dtype), down, group_sizes), h


def experts_ragged(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                   ffn_mask: jax.Array | None = None) -> jax.Array:
    """Grouped relu^2 FFN over expert-sorted rows with lax.ragged_dot (`ffn_mask` [F] scales hidden channels)."""
    return experts_ragged_parts(x_rows, group_sizes, up, down, ffn_mask)[0]


def experts_blocked(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                    block: int = 64, ffn_mask: jax.Array | None = None) -> jax.Array:
    """Grouped relu^2 FFN over expert-sorted rows, each expert's rows padded to whole blocks.

    Every block belongs to one expert, so the work is a batched matmul over blocks: dropless, and the
    compute is that of the routed rows (plus at most one partial block per expert), not of every expert.
    """
    rows, num_experts = x_rows.shape[0], up.shape[0]
    if rows <= num_experts:  # decode-sized inputs: gather just the routed experts' weights, one per row
        expert_of_row = _expert_of_row(group_sizes, rows)
        h = relu2(jnp.einsum("rd,rdf->rf", x_rows, up[expert_of_row]))
        if ffn_mask is not None:
            h = h * ffn_mask.astype(h.dtype)
        return jnp.einsum("rf,rfd->rd", h.astype(x_rows.dtype), down[expert_of_row])
    block = max(1, min(block, rows))
    num_blocks = -(-rows // block) + num_experts  # ceil(rows/block) + one partial block per expert
    padded = (group_sizes + block - 1) // block * block
    group_start = jnp.cumsum(group_sizes) - group_sizes
    padded_start = jnp.cumsum(padded) - padded
    expert_of_row = _expert_of_row(group_sizes, rows)
    dest = padded_start[expert_of_row] + jnp.arange(rows) - group_start[expert_of_row]
    slots = jnp.zeros((num_blocks * block, x_rows.shape[1]), x_rows.dtype).at[dest].set(x_rows)
    block_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(num_blocks) * block, side="right")
    block_expert = jnp.minimum(block_expert, num_experts - 1)
    xb = slots.reshape(num_blocks, block, -1)
    h = relu2(jnp.einsum("nbd,ndf->nbf", xb, up[block_expert]))
    if ffn_mask is not None:
        h = h * ffn_mask.astype(h.dtype)
    yb = jnp.einsum("nbf,nfd->nbd", h.astype(x_rows.dtype), down[block_expert])
    return yb.reshape(num_blocks * block, -1)[dest]


def experts_windowed(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                     ffn_mask: jax.Array | None = None, capacity_factor: float = 2.0) -> jax.Array:
    """Grouped relu^2 FFN on CPU: one window of `capacity` sorted rows per expert, multiplied by that expert's
    own weights (no weight copies); when some expert holds more rows than a window, the whole layer takes the
    blocked path instead (lax.cond), so no token is ever dropped."""
    rows, num_experts, dim = x_rows.shape[0], up.shape[0], x_rows.shape[1]
    capacity = -(-int(capacity_factor * -(-rows // num_experts)) // 8) * 8
    if rows <= num_experts or capacity >= rows:
        return experts_blocked(x_rows, group_sizes, up, down, ffn_mask=ffn_mask)

    def windows(x_rows, group_sizes, up, down, ffn_mask):
        starts = jnp.cumsum(group_sizes) - group_sizes
        padded = jnp.concatenate([x_rows, jnp.zeros((capacity, dim), x_rows.dtype)])
        out = jnp.zeros((rows + capacity, dim), x_rows.dtype)
        for e in range(num_experts):
            window = jax.lax.dynamic_slice(padded, (starts[e], 0), (capacity, dim))
            h = relu2(window @ up[e])
            if ffn_mask is not None:
                h = h * ffn_mask.astype(h.dtype)
            y = h.astype(x_rows.dtype) @ down[e]
            kept = jax.lax.dynamic_slice(out, (starts[e], 0), (capacity, dim))
            y = jnp.where((jnp.arange(capacity) < group_sizes[e])[:, None], y, kept)
            out = jax.lax.dynamic_update_slice(out, y, (starts[e], 0))
        return out[:rows]

    def blocked(x_rows, group_sizes, up, down, ffn_mask):
        return experts_blocked(x_rows, group_sizes, up, down, block=256, ffn_mask=ffn_mask)

    return jax.lax.cond(jnp.max(group_sizes) <= capacity, windows, blocked, x_rows, group_sizes, up, down, ffn_mask)


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
    """Routed experts (stacked [E, in, out] kernels) plus one unweighted shared expert."""

    hidden_size: int
    num_experts: int
    top_k: int
    expert_size: int
    shared_size: int
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer: int, *, dtype: jnp.dtype = jnp.float32, impl: str = "auto",
                    **module: Any) -> MoE:
        """The MoE mixer of `layer` (its possibly per-layer expert count and widths)."""
        return cls(hidden_size=cfg.hidden_size, num_experts=cfg.width("n_routed_experts", layer),
                   top_k=cfg.num_experts_per_tok, expert_size=cfg.width("moe_intermediate_size", layer),
                   shared_size=cfg.width("moe_shared_expert_intermediate_size", layer), n_group=cfg.n_group,
                   topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
                   routed_scaling_factor=cfg.routed_scaling_factor, impl=impl, dtype=dtype,
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
        decl, init = by_name(self.declarations()), nn.initializers.normal(self.init_std)
        gate_w = declared_param(self, decl["gate"], init)
        bias = declared_param(self, decl["e_score_correction_bias"], nn.initializers.zeros)
        up = declared_param(self, decl["up_proj"], init)
        down = declared_param(self, decl["down_proj"], init)

        tokens = x.reshape(-1, self.hidden_size)
        impl = self.impl
        if impl == "auto":
            # a plan's target, else this host; a GPU plan compiled on CPU devices sizes the CPU loop's rows
            impl = "looped" if compile_target() == "cpu" or host_experts() else "ragged"
        decode_sized = tokens.shape[0] * self.top_k <= self.num_experts
        if impl == "looped" and decode_sized:
            impl = "blocked"  # decode: a row or two per expert, gather just the routed experts' weights
        if tokens.shape[0] == 1 and self.dtype == jnp.float32 and cpu_gemv.active(tokens):
            return self._with_shared(x, self._routed_in_place(tokens, gate_w, bias, up, down, masks), masks)
        views = decode_sized and self.has_variable(DECODE_VIEWS, "up_proj")
        if not views and not self.is_mutable_collection("intermediates"):  # training, prefill, evaluation
            tensor = _tensor_axis(self.expert_size)
            t = P(tensor) if tensor else P()
            specs = (P(), P(), P(None, None, tensor), P(None, tensor, None), P(), t)
            routed = on_local_rows(self._routed, x, (gate_w, bias, up, down, masks.experts, masks.expert_ffn),
                                   specs, impl=impl, tensor_axis=tensor)
            return self._with_shared(x, routed.reshape(tokens.shape), masks)
        idx, weights = route(tokens, gate_w, bias, top_k=self.top_k, n_group=self.n_group,
                             topk_group=self.topk_group, norm_topk_prob=self.norm_topk_prob,
                             scaling=self.routed_scaling_factor, expert_mask=masks.experts)
        order, token_of_row, group_sizes = _sort_assignments(idx, self.num_experts)
        x_rows = tokens[token_of_row].astype(self.dtype)
        if views:  # no copies: see decode_views.py
            y_rows = experts_switched(x_rows, group_sizes, self.get_variable(DECODE_VIEWS, "up_proj"),
                                      self.get_variable(DECODE_VIEWS, "down_proj"), masks.expert_ffn)
        else:  # importance (elastic/importance.py) reads every row
            y_rows, hidden = experts_ragged_parts(x_rows, group_sizes, up.astype(self.dtype), down.astype(self.dtype),
                                                  masks.expert_ffn)
            self.sow("intermediates", ROUTED_ROWS, {"hidden": hidden, "outputs": y_rows, "tokens": token_of_row,
                                                    "weights": weights.reshape(-1)[order],
                                                    "experts": idx.reshape(-1)[order]})
        y_rows = y_rows.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
        routed = jnp.zeros((tokens.shape[0], self.hidden_size), jnp.float32).at[token_of_row].add(y_rows)
        return self._with_shared(x, routed, masks)

    def _routed(self, x: jax.Array, gate_w: jax.Array, bias: jax.Array, up: jax.Array, down: jax.Array,
                expert_mask: jax.Array | None, ffn_mask: jax.Array | None, *, impl: str,
                tensor_axis: str | None = None) -> jax.Array:
        """The routed experts' weighted output [..., D] (float32) for tokens x [..., D]: route, sort the
        (token, expert) rows by expert, the grouped FFN (`impl`), weight, and add back to the tokens. With
        `tensor_axis`, up / down hold this device's slice of the expert width and the output is summed over it."""
        tokens = x.reshape(-1, self.hidden_size)
        idx, weights = route(tokens, gate_w, bias, top_k=self.top_k, n_group=self.n_group,
                             topk_group=self.topk_group, norm_topk_prob=self.norm_topk_prob,
                             scaling=self.routed_scaling_factor, expert_mask=expert_mask)
        if impl == "dense":
            routed = experts_dense(tokens.astype(self.dtype), idx, weights, up.astype(self.dtype),
                                   down.astype(self.dtype), ffn_mask)
            return _sum_over(routed, tensor_axis).reshape(x.shape)
        order, token_of_row, group_sizes = _sort_assignments(idx, self.num_experts)
        x_rows = tokens[token_of_row].astype(self.dtype)
        expert_fn = {"ragged": experts_ragged, "blocked": experts_blocked, "windowed": experts_windowed,
                     "looped": experts_looped}[impl]
        if ffn_mask is None:
            y_rows = expert_fn(x_rows, group_sizes, up.astype(self.dtype), down.astype(self.dtype))
        else:
            y_rows = expert_fn(x_rows, group_sizes, up.astype(self.dtype), down.astype(self.dtype), ffn_mask=ffn_mask)
        y_rows = y_rows.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
        routed = jnp.zeros((tokens.shape[0], self.hidden_size), jnp.float32).at[token_of_row].add(y_rows)
        return _sum_over(routed, tensor_axis).reshape(x.shape)

    def _routed_in_place(self, token: jax.Array, gate_w: jax.Array, bias: jax.Array, up: jax.Array, down: jax.Array,
                         masks: LayerMasks) -> jax.Array:
        """The routed output [1, D] of one token in batch-1 CPU decoding: the chosen experts' products read their
        weights in place from the stacked arrays (kernels/cpu_gemv), in one call for the ups and one for the downs."""
        idx, weights = route(token, gate_w, bias, top_k=self.top_k, n_group=self.n_group, topk_group=self.topk_group,
                             norm_topk_prob=self.norm_topk_prob, scaling=self.routed_scaling_factor,
                             expert_mask=masks.experts)
        hidden = relu2(cpu_gemv.expert_products(token, up, idx[0]))
        if masks.expert_ffn is not None:
            hidden = hidden * masks.expert_ffn.astype(hidden.dtype)
        y = cpu_gemv.expert_products(hidden, down, idx[0])
        return (y * weights[0][:, None]).sum(0, keepdims=True)

    def _with_shared(self, x: jax.Array, routed: jax.Array, masks: LayerMasks) -> tuple[jax.Array, None]:
        shared, _ = MLP(hidden_size=self.hidden_size, intermediate_size=self.shared_size, dtype=self.dtype,
                        init_std=self.init_std, width_axis="shared_mlp", name="shared_experts")(x, masks=masks)
        return (routed.reshape(x.shape).astype(self.dtype) + shared).astype(self.dtype), None

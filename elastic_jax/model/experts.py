"""The routed experts' relu^2 FFN in the forms MoE's strategies use (model/moe.py `choose_strategy`).

Every form computes, for each (token, expert) row, down_e(relu(up_e(x))^2) with the hidden channels scaled by
`ffn_mask` (optional, [F]); rows come sorted by expert with `group_sizes` [E] rows per expert.
- grouped: `experts_ragged` (`lax.ragged_dot`, a grouped GEMM on GPU / TPU) or the CPU block loop
  (`experts_looped.py`);
- gathered: `experts_gathered` (each row's expert weights gathered, XLA), `experts_switched` (each row's expert
  picked from per-expert views with `lax.switch`, no copy; model/decode_views.py), `experts_in_place` (a decode
  kernel reads the stacked weights in place, each chosen expert once for a few tokens);
- dense: `experts_dense` (every expert on every token, the unchosen dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elastic_jax.kernels.target import DecodeKernels
from elastic_jax.model.mlp import relu2


def _expert_of_row(group_sizes: jax.Array, rows: int) -> jax.Array:
    """The expert of each expert-sorted row [rows]."""
    return jnp.repeat(jnp.arange(group_sizes.shape[0]), group_sizes, total_repeat_length=rows)


def _scaled(h: jax.Array, ffn_mask: jax.Array | None) -> jax.Array:
    return h if ffn_mask is None else h * ffn_mask.astype(h.dtype)


def experts_ragged(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                   ffn_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(outputs [rows, D], hidden activations [rows, F]) with lax.ragged_dot."""
    h = _scaled(relu2(jax.lax.ragged_dot(x_rows, up, group_sizes)), ffn_mask)
    return jax.lax.ragged_dot(h.astype(x_rows.dtype), down, group_sizes), h


def experts_gathered(x_rows: jax.Array, group_sizes: jax.Array, up: jax.Array, down: jax.Array,
                     ffn_mask: jax.Array | None = None) -> jax.Array:
    """Each row times its own expert's weights, gathered from the stacked [E, ...] arrays (a copy per row)."""
    expert_of_row = _expert_of_row(group_sizes, x_rows.shape[0])
    h = _scaled(relu2(jnp.einsum("rd,rdf->rf", x_rows, up[expert_of_row])), ffn_mask)
    return jnp.einsum("rf,rfd->rd", h.astype(x_rows.dtype), down[expert_of_row])


def experts_switched(x_rows: jax.Array, group_sizes: jax.Array, ups: tuple, downs: tuple,
                     ffn_mask: jax.Array | None = None) -> jax.Array:
    """Each row multiplied by its expert's own arrays (per-expert views), picked with `lax.switch`."""
    rows, num_experts = x_rows.shape[0], len(ups)
    expert_of_row = _expert_of_row(group_sizes, rows)

    def branch(e):
        return lambda row: _scaled(relu2(row @ ups[e]), ffn_mask).astype(row.dtype) @ downs[e]

    branches = [branch(e) for e in range(num_experts)]
    return jnp.concatenate([jax.lax.switch(expert_of_row[r], branches, x_rows[r:r + 1]) for r in range(rows)])


def experts_in_place(kernels: DecodeKernels, tokens: jax.Array, idx: jax.Array, weights: jax.Array, up: jax.Array,
                     down: jax.Array, ffn_mask: jax.Array | None = None) -> jax.Array:
    """The weighted routed output [T, D] of a few tokens [T, D] routed to experts idx [T, k] (weights [T, k]): the
    decode kernels read the chosen experts' weights in place, each once for all the tokens that chose it, one call
    for the ups and one for the downs."""
    hidden = _scaled(relu2(kernels.experts(tokens, up, idx)), ffn_mask)
    y = kernels.experts(hidden, down, idx)
    return (y * weights[:, :, None]).sum(1)


def experts_dense(tokens: jax.Array, idx: jax.Array, weights: jax.Array, up: jax.Array, down: jax.Array,
                  ffn_mask: jax.Array | None = None) -> jax.Array:
    """Routed output [T, D] (float32) computed by every expert for every token, the unchosen ones dropped: every
    expert's weights are read once for all the tokens, the work of one [T, D] x [D, E*F] product."""
    # experts as the dots' batch axis: each product reads its expert's [in, out] weights as stored (a [T, D] x
    # [E, D, F] product without it transposes every weight on each call)
    x = jnp.broadcast_to(tokens, (up.shape[0], *tokens.shape))
    h = _scaled(relu2(jnp.einsum("etd,edf->etf", x, up)), ffn_mask)
    y = jnp.einsum("etf,efd->etd", h.astype(tokens.dtype), down).astype(jnp.float32)
    chosen = jnp.arange(up.shape[0])[:, None, None] == idx[None]  # [E, T, k]
    scale = jnp.sum(jnp.where(chosen, weights[None], 0.0), axis=2)  # [E, T]
    return jnp.sum(jnp.where(jnp.any(chosen, axis=2)[:, :, None], y * scale[:, :, None], 0.0), axis=0)


__all__ = ["experts_dense", "experts_gathered", "experts_in_place", "experts_ragged", "experts_switched"]

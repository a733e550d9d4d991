"""Expert parallelism: each device of the mesh's `expert` axis holds its own slice of the experts, and the routed
rows travel to the devices that hold their experts and back (MaxText's `RoutedMoE`, batch-sharded form).

A MoE layer's grouped route runs on each device's own batch rows (model/local_rows.py) and sorts its (token,
expert) rows by expert, so the rows bound for each device of the expert axis are contiguous. The devices
exchange their per-expert counts (an all-gather of E integers), send each device its rows, compute the rows they
received with their own experts (sorted by local expert, a grouped GEMM over E / n experts), and send the outputs
back in the same layout. The exchange is dropless, in one of two forms chosen by the compile target
(kernels/target.py `ragged_exchange`), equal in values:
- "ragged" (`lax.ragged_all_to_all`, GPU / TPU): each device sends exactly its rows; each receives into a buffer
  that holds the most it can be sent (every device sending all its rows: n x tokens x min(top_k, E / n));
- "padded" (`lax.all_to_all`, the CPU's, where XLA has no ragged all-to-all): every (sender, receiver) pair gets a
  slot of tokens x min(top_k, E / n) rows, the most one device can send another, so nothing is dropped either;
  the send buffer is n times the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from elastic_jax.kernels.mesh import current_mesh, parallel_axes

EXPERT_AXIS = "expert"


def expert_axis(num_experts: int, batch: int) -> str | None:
    """EXPERT_AXIS when the current mesh has it (over more than one device) and it splits both the experts (as
    distributed.py's rules shard the stacked expert weights) and the batch rows (every device routes rows of its
    own), else None: the route then runs on every expert locally."""
    found = current_mesh()
    if found is None or EXPERT_AXIS not in found[1]:
        return None
    mesh = found[0]
    size = mesh.shape[EXPERT_AXIS]
    if size == 1 or num_experts % size:
        return None
    return EXPERT_AXIS if EXPERT_AXIS in parallel_axes(mesh, batch, 1, 1)[0] else None


def _exclusive_cumsum(x: jax.Array, axis: int = -1) -> jax.Array:
    return jnp.cumsum(x, axis=axis) - x


def _local_experts_of(starts: jax.Array, sizes: jax.Array, rows: int, num_local: int) -> jax.Array:
    """The local expert of each of `rows` received rows [rows] (num_local for padding), given the (sender, local
    expert) segments' starts and sizes [n, El] in ascending order of start."""
    starts, sizes = starts.reshape(-1), sizes.reshape(-1)
    pos = jnp.arange(rows)
    seg = jnp.clip(jnp.searchsorted(starts, pos, side="right") - 1, 0, starts.shape[0] - 1)
    valid = pos < starts[seg] + sizes[seg]  # an empty segment never hides a row: the starts ascend
    return jnp.where(valid, seg % num_local, num_local)


def across_experts(x_rows: jax.Array, group_sizes: jax.Array, compute: Callable[[jax.Array, jax.Array], jax.Array],
                   *, top_k: int, axis: str = EXPERT_AXIS, ragged: bool) -> jax.Array:
    """Output rows [R, D] of expert-sorted rows x_rows [R, D] (group_sizes [E]: rows per expert, all experts) whose
    experts are split over the devices of `axis` (device i holds experts [i * E/n, (i+1) * E/n)): each row goes to
    its expert's device, `compute(rows, local_group_sizes [E/n])` runs there on the rows it received sorted by local
    expert (padding rows after them), and the outputs come back in x_rows' order. Inside a shard_map over `axis`."""
    n, me = jax.lax.axis_size(axis), jax.lax.axis_index(axis)
    num_local = group_sizes.shape[0] // n
    counts = jax.lax.all_gather(group_sizes.astype(jnp.int32), axis).reshape(n, n, num_local)  # [sender, dest, e]
    send = counts.sum(-1)  # [sender, dest] rows
    mine, received = send[me], send[:, me]
    from_each = jax.lax.dynamic_index_in_dim(counts, me, axis=1, keepdims=False)  # [sender, local expert]
    slot = (x_rows.shape[0] // top_k) * min(top_k, num_local)  # the most rows one device sends another
    starts = _exclusive_cumsum(mine)
    if ragged:
        at_dest = jax.lax.dynamic_index_in_dim(_exclusive_cumsum(send, axis=0), me, axis=0, keepdims=False)
        buf = jax.lax.ragged_all_to_all(x_rows, jnp.zeros((n * slot, x_rows.shape[1]), x_rows.dtype), starts, mine,
                                        at_dest, received, axis_name=axis)
        seg_starts = _exclusive_cumsum(from_each.reshape(-1)).reshape(n, num_local)
    else:
        dest = jnp.searchsorted(jnp.cumsum(mine), jnp.arange(x_rows.shape[0]), side="right")
        place = dest * slot + jnp.arange(x_rows.shape[0]) - starts[dest]
        out = jnp.zeros((n * slot, x_rows.shape[1]), x_rows.dtype).at[place].set(x_rows, unique_indices=True)
        buf = jax.lax.all_to_all(out, axis, 0, 0, tiled=True)
        seg_starts = jnp.arange(n)[:, None] * slot + _exclusive_cumsum(from_each, axis=1)
    local = _local_experts_of(seg_starts, from_each, buf.shape[0], num_local)
    order = jnp.argsort(local, stable=True)
    y_sorted = compute(buf[order], from_each.sum(0))
    y_buf = jnp.zeros((buf.shape[0], y_sorted.shape[1]), y_sorted.dtype).at[order].set(y_sorted,
                                                                                       unique_indices=True)
    if ragged:
        back_at = jax.lax.dynamic_index_in_dim(_exclusive_cumsum(send, axis=1), me, axis=1, keepdims=False)
        return jax.lax.ragged_all_to_all(y_buf, jnp.zeros((x_rows.shape[0], y_buf.shape[1]), y_buf.dtype),
                                         _exclusive_cumsum(received), received, back_at, mine, axis_name=axis)
    return jax.lax.all_to_all(y_buf, axis, 0, 0, tiled=True)[place]


__all__ = ["EXPERT_AXIS", "across_experts", "expert_axis"]

"""The current device mesh and which of its axes split batch rows and heads: what a per-device computation
(a Mosaic kernel, a MoE layer's routing) needs to know to run under `jax.shard_map`."""

from __future__ import annotations

import math

import jax

# Mirror the batch and heads rules of elastic_jax/distributed.py (SHARDING_RULES) so that activations laid out by
# those rules enter a per-device computation without being moved.
BATCH_AXES = ("data", "fsdp", "expert")
HEAD_AXES = ("tensor",)


def parallel_axes(mesh, batch: int, heads: int, groups: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(mesh axes splitting the batch, mesh axes splitting heads and groups): each axis taken only if it divides."""
    free = [a for a in mesh.axis_names if a not in mesh.manual_axes and mesh.shape[a] > 1]
    batch_axes: list[str] = []
    for a in (a for a in BATCH_AXES if a in free):
        if batch % (math.prod(mesh.shape[x] for x in batch_axes) * mesh.shape[a]) == 0:
            batch_axes.append(a)
    head_axes: list[str] = []
    for a in (a for a in HEAD_AXES if a in free):
        size = math.prod(mesh.shape[x] for x in head_axes) * mesh.shape[a]
        if heads % size == 0 and groups % size == 0:
            head_axes.append(a)
    return tuple(batch_axes), tuple(head_axes)


def current_mesh() -> tuple[object, tuple[str, ...]] | None:
    """(the current mesh, its automatic axes) under `jax.set_mesh` / `use_abstract_mesh` when those axes span
    more than one device, else None (no mesh, one device, or inside a shard_map over every axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    auto = () if mesh.empty else tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
    if not auto or math.prod(mesh.shape[a] for a in auto) == 1:
        return None
    return mesh, auto


__all__ = ["BATCH_AXES", "HEAD_AXES", "current_mesh", "parallel_axes"]

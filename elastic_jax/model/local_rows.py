"""Run a per-token computation on each device's own batch rows under a mesh (`jax.set_mesh`).

Routing sorts a layer's (token, expert) rows by expert. Traced over the global batch, XLA's partitioner cannot
split that sort by devices, so every device would sort, gather and multiply the whole global batch's rows (on 16
devices at the Nano shape, 23 GiB per MoE layer instead of about 1.5). Wrapped in a `shard_map` over the batch
axes, each device routes its own rows: the weights enter whole over the FSDP axis (XLA gathers them first, as it
does for any layer), split over `tensor` where the caller says so, and their gradients are summed over the
devices. Without a mesh, or on one device, the function runs as is; rows that the batch axes cannot split enter
whole where an entry is split (over `tensor`), so that the function's reduction over that axis has its axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from elastic_jax.kernels.mesh import current_mesh, parallel_axes


def on_local_rows(fn: Callable, x: jax.Array, replicated: Sequence[Any], specs: Sequence[P] | None = None,
                  **static: Any) -> jax.Array:
    """fn(x, *replicated, **static) -> an array shaped like x, computed row by row of x's leading (batch) axis;
    entries of `replicated` may be None. `specs` (optional, one per entry): how an entry enters instead of whole,
    e.g. split over `tensor` (fn then reduces over that axis itself)."""
    found = current_mesh()
    if found is None:
        return fn(x, *replicated, **static)
    mesh, auto = found
    batch_axes, _ = parallel_axes(mesh, x.shape[0], 1, 1)
    split = specs is not None and any(axis for spec in specs for axis in spec)
    if not batch_axes and not split:
        return fn(x, *replicated, **static)
    present = [i for i, a in enumerate(replicated) if a is not None]

    def local(x_local, *values):
        full = [None] * len(replicated)
        for i, v in zip(present, values):
            full[i] = v
        return fn(x_local, *full, **static)

    rows = P(batch_axes or None)  # rows that do not split over the batch axes: whole on every device
    specs = [P()] * len(replicated) if specs is None else list(specs)
    return jax.shard_map(local, mesh=mesh, in_specs=(rows, *(specs[i] for i in present)), out_specs=rows,
                         axis_names=set(auto), check_vma=False)(x, *(replicated[i] for i in present))

"""Run a Mosaic (Pallas TPU) SSD kernel on a mesh of several chips.

XLA cannot partition a Mosaic custom call ("Mosaic kernels cannot be automatically partitioned"), so under a mesh
(`jax.set_mesh`) the kernel call is wrapped in a `shard_map` over the axes it is parallel in: batch rows and heads
(with their B/C groups). Axes that split neither run the kernel replicated. Without a mesh, or on one device, the
kernel is called as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

from elastic_jax.kernels.mesh import current_mesh, parallel_axes


def sharded_over_mesh(forward: Callable) -> Callable:
    """forward(x, dt, A, B, C, D, initial_state[, seq_idx], chunk_size, interpret), run under a shard_map over the
    current mesh's batch and head axes when there is a mesh of more than one device."""

    @functools.wraps(forward)
    def wrapped(*args):
        *arrays, chunk_size, interpret = args
        found = current_mesh()
        if found is None:
            return forward(*args)
        mesh, auto = found
        x, B = arrays[0], arrays[3]
        bax, hax = parallel_axes(mesh, x.shape[0], x.shape[2], B.shape[2])
        bs, hs = (bax or None), (hax or None)
        # x, dt, A, B, C, D, initial_state, seq_idx
        specs = (P(bs, None, hs, None), P(bs, None, hs), P(hs), P(bs, None, hs, None), P(bs, None, hs, None), P(hs),
                 P(bs, hs, None, None), P(bs, None))
        present = [i for i, a in enumerate(arrays) if a is not None]

        def local(*values):
            full = [None] * len(arrays)
            for i, v in zip(present, values):
                full[i] = v
            return forward(*full, chunk_size, interpret)

        return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs[i] for i in present),
                             out_specs=(P(bs, None, hs, None), P(bs, hs, None, None)), axis_names=set(auto),
                             check_vma=False)(*(arrays[i] for i in present))

    return wrapped

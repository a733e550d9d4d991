"""Inputs of the chunk-parallel Pallas GPU SSD kernels: padding, the chunk cumsum of dt * A, and the block specs.

Every kernel keeps the public [batch, time, heads, ...] layouts (Triton blocks are strided pointers, so no transpose
is needed); a program's block is one chunk of one head: x [q, p], dt / cumsum [q], B / C [q, n] of its group. Chunk
states live as [b, c, h, n, p] float32 (row c: the state entering chunk c, or chunk c's own contribution), [n, p]
so that every product is a plain 2-D dot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from elastic_jax.kernels.ssd.xla import document_starts_per_chunk, pad_to_chunks


class Chunked(NamedTuple):
    """Padded inputs (time padded to a multiple of the kernel chunk q with zero dt: exact no-op steps)."""

    x: jax.Array  # [b, Lp, h, p], x.dtype
    dt: jax.Array  # [b, Lp, h] f32
    B: jax.Array  # [b, Lp, g, n]
    C: jax.Array  # [b, Lp, g, n]
    acum: jax.Array  # [b, Lp, h] f32: cumsum of dt * A inside each chunk
    et: jax.Array  # [b, c, h] f32: decay over the whole chunk, zero where a document starts in it
    rk: jax.Array | None  # [b, Lp] f32: document starts in the chunk up to each step (None: one document)


def chunk_inputs(x, dt, A, B, C, seq_idx, q: int) -> Chunked:
    """The chunk cumsum and whole-chunk decays in XLA ([b, Lp, h]: a few MiB, one fused pass)."""
    b, _, h, _ = x.shape
    xp, bp, cp = (pad_to_chunks(v, q) for v in (x, B, C))
    dtp = pad_to_chunks(dt.astype(jnp.float32), q)
    lp = xp.shape[1]
    acum = jnp.cumsum((dtp * A.astype(jnp.float32)).reshape(b, lp // q, q, h), axis=2)
    et = jnp.exp(acum[:, :, -1])
    rk = None
    if seq_idx is not None:
        starts = document_starts_per_chunk(seq_idx, q).transpose(1, 0, 2)  # [b, c, q]
        et = jnp.where(starts[:, :, -1:] == 0, et, 0.0)
        rk = starts.reshape(b, lp).astype(jnp.float32)
    return Chunked(xp, dtp, bp, cp, acum.reshape(b, lp, h), et, rk)


# Block specs of the per-chunk kernels, whose grid is (batch, chunk, head); `r` = heads per group.
def rows(q: int, width: int) -> pl.BlockSpec:
    """[b, Lp, h, width] -> this chunk's [q, width] rows of this head."""
    return pl.BlockSpec((None, q, None, width), lambda i, k, j: (i, k, j, 0))


def group_rows(q: int, n: int, r: int) -> pl.BlockSpec:
    """[b, Lp, g, n] -> this chunk's [q, n] rows of this head's group."""
    return pl.BlockSpec((None, q, None, n), lambda i, k, j: (i, k, j // r, 0))


def steps(q: int) -> pl.BlockSpec:
    """[b, Lp, h] -> this chunk's [q] steps of this head."""
    return pl.BlockSpec((None, q, None), lambda i, k, j: (i, k, j))


def doc_steps(q: int) -> pl.BlockSpec:
    """[b, Lp] (document-start counts, shared by the heads) -> this chunk's [q]."""
    return pl.BlockSpec((None, q), lambda i, k, j: (i, k))


def state(n: int, p: int) -> pl.BlockSpec:
    """[b, c, h, n, p] -> this chunk's [n, p] state of this head."""
    return pl.BlockSpec((None, None, None, n, p), lambda i, k, j: (i, k, j, 0, 0))


def per_chunk() -> pl.BlockSpec:
    """[b, c, h] -> this chunk's scalar."""
    return pl.BlockSpec((None, None, None), lambda i, k, j: (i, k, j))


def per_head(h: int) -> pl.BlockSpec:
    """[h] whole (A, D: each program reads its head's entry)."""
    return pl.BlockSpec((h,), lambda i, k, j: (0,))

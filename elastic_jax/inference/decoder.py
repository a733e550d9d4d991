"""The one decode stack: a batch of sequences of one architecture, started (caches + prompts fed), fed more tokens,
and decoded, over the compiled programs of programs.py. The engine serves every budget with it and `generate`
decodes a bare model with it (the full architecture)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.inference.programs import PROGRAMS, decode_target, make_decode, make_feed
from elastic_jax.model.cache import init_cache
from elastic_jax.model.functional import InputError

FEED_BASE = 4  # prompts are fed in pieces of 1, 4, 16, ... tokens: few programs per architecture, few calls each
CAPACITY_MULTIPLE = 64  # cache lengths are rounded up to this, so requests of similar length share programs


def capacity_for(tokens: int, limit: int) -> int:
    """The cache capacity for sequences of up to `tokens` tokens: rounded up to CAPACITY_MULTIPLE, at most `limit`
    (the model's context)."""
    return min(limit, -(-tokens // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE)


@dataclasses.dataclass
class Batch:
    """Decoding state of a batch of sequences under one architecture (see programs.py for the cache layout):
    `spec` of the parent `cfg`, whose parameters every call takes."""

    cfg: ModelConfig
    spec: ElasticSpec
    caches: Any
    logits: jax.Array  # [B, vocab]: after each row's last token
    tokens: list[list[int]]  # each row's whole text so far
    capacity: int
    keys: jax.Array  # [B] per-row sampling keys
    emitted: np.ndarray  # [B] tokens generated so far per row (the sampling step index)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def start(cfg: ModelConfig, spec: ElasticSpec, params: Any, prompts: Sequence[Sequence[int]], capacity: int,
          seed: int = 0) -> Batch:
    """Fresh caches of `capacity` tokens for the prompts' rows (architecture `spec` of the parent `cfg`), filled
    with the prompts (the prefill)."""
    rows, sub_cfg = len(prompts), spec.apply_to(cfg)
    one = init_cache(sub_cfg, 1, capacity)
    caches = jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, *x.shape)), one)
    logits = jnp.zeros((rows, sub_cfg.vocab_size), jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(rows))
    batch = Batch(cfg, spec, caches, logits, [[] for _ in prompts], capacity, keys, np.zeros(rows, np.int32))
    feed(batch, params, prompts)
    return batch


def feed(batch: Batch, params: Any, rows: Sequence[Sequence[int]]) -> None:
    """Append each row's tokens (any lengths, empty allowed) to its cache, in pieces of powers of FEED_BASE."""
    if len(rows) != len(batch.tokens):
        raise InputError(f"feed: got {len(rows)} rows of tokens for a batch of {len(batch.tokens)}")
    lengths = np.array([len(r) for r in rows])
    if (lengths + batch.lengths).max() > batch.capacity:
        raise InputError(f"feed: a row would hold {(lengths + batch.lengths).max()} tokens, more than the cache "
                         f"capacity {batch.capacity}")
    done = np.zeros(len(rows), np.int64)
    for piece, active in _pieces(lengths):
        tokens = np.zeros((len(rows), piece), np.int32)
        for r in np.flatnonzero(active):
            tokens[r] = rows[r][done[r]:done[r] + piece]
        done += np.where(active, piece, 0)
        fn = PROGRAMS.get(("feed", batch.cfg, batch.spec, len(rows), piece, batch.capacity),
                          lambda: make_feed(batch.cfg, batch.spec, len(rows)))
        batch.logits, batch.caches = fn(params, jnp.asarray(tokens), batch.caches, batch.logits, jnp.asarray(active))
    for r, row in enumerate(rows):
        batch.tokens[r].extend(int(t) for t in row)


def decode(batch: Batch, params: Any, max_new_tokens: int, *, stop_ids: Sequence[int] = (), temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, done: Sequence[bool] | None = None) -> list[list[int]]:
    """Up to `max_new_tokens` new tokens per row (a row ends after emitting any of `stop_ids`; rows marked `done`
    emit nothing); the settings are checked by the caller. Returns each row's new tokens; the batch continues."""
    room = batch.capacity - max(batch.lengths)
    if max_new_tokens > room:
        raise InputError(f"max_new_tokens {max_new_tokens} exceeds the room left in the cache ({room} tokens)")
    stops, rows = tuple(int(s) for s in stop_ids), len(batch.tokens)
    target = decode_target(rows, max_new_tokens)
    settings = (float(temperature), int(top_k), float(top_p), stops, batch.cfg.pad_token_id)
    fn = PROGRAMS.get(("decode", batch.cfg, batch.spec, rows, batch.capacity, *settings, target),
                      lambda: make_decode(batch.cfg, batch.spec, batch.capacity, *settings, target))
    done0 = jnp.zeros(rows, bool) if done is None else jnp.asarray(np.asarray(done, bool))
    out, count, batch.logits, batch.caches, _ = fn(params, batch.caches, batch.logits, batch.keys,
                                                   jnp.asarray(batch.emitted), done0,
                                                   jnp.asarray(max_new_tokens, jnp.int32))
    out, count = np.asarray(out), np.asarray(count)
    new = [out[r, :count[r]].tolist() for r in range(rows)]
    for r, toks in enumerate(new):
        batch.tokens[r].extend(toks)
    batch.emitted = batch.emitted + count
    return new


def _pieces(lengths: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(piece size, rows taking a piece of that size) in feeding order: each length written in base FEED_BASE,
    largest digit first, one call per unit of a digit (so at most FEED_BASE - 1 calls per piece size)."""
    piece = 1
    while piece * FEED_BASE <= max(int(lengths.max()), 1):
        piece *= FEED_BASE
    while piece >= 1:
        digits = (lengths // piece) % FEED_BASE
        for unit in range(FEED_BASE - 1):
            active = digits > unit
            if active.any():
                yield piece, active
        piece //= FEED_BASE


__all__ = ["CAPACITY_MULTIPLE", "FEED_BASE", "Batch", "capacity_for", "decode", "feed", "start"]

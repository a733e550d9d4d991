"""Slots: a fixed number of rows of one architecture, each an independent sequence that joins and leaves between
calls (continuous batching). A server admits a request into a free row, feeds its prompt a piece at a time, decodes
a few tokens for every decoding row per call, and frees the row when the request ends.

    slots = SlotBatch(engine, budget=0.7, rows=8, capacity=256)
    row = slots.admit(prompt_len=5, settings=RowSettings(max_tokens=16, stop_ids=(2,)))
    slots.feed(row, prompt[:4]); slots.feed(row, prompt[4:])
    tokens = slots.decode(steps=4)        # {row: new tokens} for the rows that are decoding
    slots.release(row)

The budget's weights are sliced once here and kept; per-row sampling settings, stop ids and token limits are
arrays, so rows with different settings share one compiled decode program (slot_programs.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.elastic.slicing import slice_params
from elastic_jax.inference.decoder import FEED_BASE
from elastic_jax.inference.engine import Arch, Engine
from elastic_jax.inference.programs import ProgramCache
from elastic_jax.inference.slot_programs import make_decode_rows, make_feed_row, make_reset
from elastic_jax.model.cache import init_cache
from elastic_jax.model.functional import InputError
from elastic_jax.quant.params import dequantize_params

MAX_STOP_IDS = 8  # stop ids per row (the array's width; more are refused)
PROGRAMS = ProgramCache(limit=64)  # shared by every slot batch of the process


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """How one row decodes: at most `max_tokens` new tokens, ending at any of `stop_ids`."""

    max_tokens: int
    stop_ids: tuple[int, ...] = ()
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def pieces(length: int, largest: int) -> list[int]:
    """Piece sizes that feed `length` tokens: powers of FEED_BASE, each at most `largest`, largest first (so a
    prompt costs few calls of few distinct programs)."""
    out, piece = [], 1
    while piece * FEED_BASE <= largest:
        piece *= FEED_BASE
    while length > 0:
        while piece > length:
            piece //= FEED_BASE
        out.append(piece)
        length -= piece
    return out


class SlotBatch:
    """`rows` sequences of one budget's architecture over caches of `capacity` tokens."""

    def __init__(self, engine: Engine, budget: float, rows: int, capacity: int, weights=None):
        """`weights`: the budget's sliced weights when another batch of the same budget holds them already."""
        if capacity > engine.cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds model.max_position_embeddings="
                             f"{engine.cfg.max_position_embeddings}")
        self.arch: Arch = engine.arch(budget)
        self.cfg, self.rows, self.capacity = self.arch.cfg, rows, capacity
        self.weights = weights if weights is not None else jax.jit(
            lambda p: slice_params(dequantize_params(p, jnp.float32), engine.cfg, self.arch.spec)[0])(
            engine.params)  # once, kept
        one = init_cache(self.cfg, 1, capacity)
        self.caches = jax.tree.map(lambda x: jnp.zeros((rows, *x.shape), x.dtype), one)
        self.logits = jnp.zeros((rows, self.cfg.vocab_size), jnp.float32)
        self.keys = jnp.zeros((rows, 2), jnp.uint32)
        self.free = list(range(rows))
        self.lengths = np.zeros(rows, np.int64)  # tokens in each row's cache
        self.emitted = np.zeros(rows, np.int32)
        self.decoding = np.zeros(rows, bool)  # prompt fed, generating
        self.left = np.zeros(rows, np.int32)
        self.temperature = np.zeros(rows, np.float32)
        self.top_k = np.zeros(rows, np.int32)
        self.top_p = np.ones(rows, np.float32)
        self.stops = np.full((rows, MAX_STOP_IDS), -1, np.int32)

    @property
    def busy(self) -> int:
        return self.rows - len(self.free)

    def admit(self, prompt_len: int, settings: RowSettings) -> int:
        """A free row, emptied and set up for a request; IndexError when none is free."""
        if prompt_len < 1 or prompt_len + settings.max_tokens > self.capacity:
            raise InputError(f"prompt ({prompt_len} tokens) + max_tokens ({settings.max_tokens}) exceeds the slot "
                             f"capacity {self.capacity}")
        if len(settings.stop_ids) > MAX_STOP_IDS:
            raise InputError(f"at most {MAX_STOP_IDS} stop ids per row, got {len(settings.stop_ids)}")
        row = self.free.pop(0)
        self.clear(row)
        # the engine's row 0 key for this seed, so a request samples what Engine.generate samples for it
        key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 0)
        self.keys = self.keys.at[row].set(key)
        self.lengths[row], self.emitted[row], self.decoding[row] = 0, 0, False
        self.left[row] = settings.max_tokens
        self.temperature[row], self.top_k[row], self.top_p[row] = settings.temperature, settings.top_k, settings.top_p
        self.stops[row] = -1
        self.stops[row, :len(settings.stop_ids)] = settings.stop_ids
        return row

    def clear(self, row: int) -> None:
        """Empty the row's caches (position 0, zero states) and logits."""
        reset = PROGRAMS.get(("reset", self.cfg, self.rows, self.capacity), make_reset)
        self.caches, self.logits = reset(self.caches, self.logits, jnp.asarray(row, jnp.int32))
        self.lengths[row] = 0

    def feed(self, row: int, tokens: Sequence[int], largest: int = 64) -> None:
        """Append tokens to the row's cache in pieces of at most `largest` (a power of FEED_BASE)."""
        at = 0
        for piece in pieces(len(tokens), largest):
            fn = PROGRAMS.get(("feed", self.cfg, self.rows, self.capacity, piece), lambda: make_feed_row(self.cfg))
            chunk = jnp.asarray(np.asarray(tokens[at:at + piece], np.int32))
            self.logits, self.caches = fn(self.weights, self.caches, self.logits, chunk, jnp.asarray(row, jnp.int32))
            at += piece
        self.lengths[row] += len(tokens)

    def start_decoding(self, row: int) -> None:
        """The row's prompt is all fed: it takes part in the next decode calls."""
        self.decoding[row] = True

    def decode(self, steps: int) -> dict[int, list[int]]:
        """Up to `steps` new tokens for every decoding row; a row whose limit or stop id is reached stops decoding
        (its tokens are returned; the caller releases the row)."""
        active = self.decoding & (self.left > 0)
        if not active.any():
            return {}
        fn = PROGRAMS.get(("decode", self.cfg, self.rows, self.capacity, steps),
                          lambda: make_decode_rows(self.cfg, self.rows, steps))
        out, count, self.logits, self.caches, done = fn(
            self.weights, self.caches, self.logits, self.keys, jnp.asarray(self.emitted), jnp.asarray(~active),
            jnp.asarray(self.left), jnp.asarray(self.temperature), jnp.asarray(self.top_k),
            jnp.asarray(self.top_p), jnp.asarray(self.stops))
        out, count, done = np.asarray(out), np.asarray(count), np.asarray(done)
        new = {int(r): out[r, :count[r]].tolist() for r in np.flatnonzero(active)}
        self.emitted += count.astype(np.int32)
        self.left -= count.astype(np.int32)
        self.lengths += count
        for r in np.flatnonzero(active & done):
            self.decoding[r] = False
            self.left[r] = 0  # ended (stop id or limit): nothing more until released
        return new

    def release(self, row: int) -> None:
        """The row is free for the next request (its state is emptied when it is admitted again)."""
        if row not in self.free:
            self.decoding[row], self.left[row] = False, 0
            self.free.append(row)


__all__ = ["MAX_STOP_IDS", "PROGRAMS", "RowSettings", "SlotBatch", "pieces"]

"""Token-weighted mixing and packing of tokenized examples into fixed rows, as a resumable grain IterDataset.

Each source is an (effectively infinite) grain MapDataset read in order. Its elements are `(tokens, loss_mask)`
int32 arrays, or `(tokens, loss_mask, starts)` where `starts` lists the offsets at which the examples packed
into one element begin (reading examples in blocks amortises the per-element cost of the grain graph).
Rows of `seq_len + 1` tokens are filled greedily: the next example comes from the source furthest below its
token share (a deterministic deficit scheduler, so the token mix matches the weights at every scale).
Examples of "atomic" sources (short reasoning problems) are never split across rows when they fit in one;
if one does not fit in the space left, that space is filled from a splittable source (text) or padded.
Every example (or piece of one) gets its own segment id within the row.

The iterator state is a handful of integers per source (next stream position, offset into the example in
progress, tokens consumed) plus a fingerprint of the pipeline, so it is small, JSON-serialisable and exact:
restoring it reproduces the following rows bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

Element = tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens, loss mask, example start offsets
STATE_VERSION = 1


def rows_to_batch(tokens: np.ndarray, mask: np.ndarray, segments: np.ndarray,
                  positions: np.ndarray, document_aware: bool = True) -> dict[str, np.ndarray]:
    """Turn packed rows of `L + 1` tokens into model inputs/targets of length L.

    loss_mask[t] is 1 only when target t is a trainable token of the same segment as input t, so no loss
    crosses a document boundary and padding (segment 0) never counts. `segment_ids` (the model's document
    mask) is left out when not `document_aware`: the model then reads each row as one sequence.
    """
    same_segment = (segments[..., 1:] == segments[..., :-1]) & (segments[..., 1:] > 0)
    batch = {
        "inputs": tokens[..., :-1].astype(np.int32),
        "targets": tokens[..., 1:].astype(np.int32),
        "loss_mask": (mask[..., 1:].astype(bool) & same_segment).astype(np.float32),
        "segment_ids": segments[..., :-1].astype(np.int32),
        "positions": positions[..., :-1].astype(np.int32),
    }
    if not document_aware:
        del batch["segment_ids"]
    return batch


class PackedMixtureIterDataset(grain.IterDataset):
    """Mix `sources` by token share `weights` and pack them into rows of `seq_len + 1` tokens.

    Elements are dicts of int32/float32 arrays of shape [seq_len] (see `rows_to_batch`; `segment_ids` only
    when `document_aware`); batch them with
    `.batch(n)`. `fingerprint` is stored in the state and checked on restore, so a state from a differently
    configured pipeline is rejected instead of silently producing other data.
    """

    def __init__(self, sources: Sequence[grain.MapDataset], weights: Sequence[float], seq_len: int, pad_id: int,
                 *, names: Sequence[str] | None = None, atomic: Sequence[bool] | None = None,
                 fingerprint: dict[str, Any] | None = None, document_aware: bool = True):
        super().__init__(list(sources))
        if not sources:
            raise ValueError("PackedMixtureIterDataset needs at least one source")
        if len(weights) != len(sources):
            raise ValueError(f"got {len(weights)} weights for {len(sources)} sources")
        if any(not w > 0 for w in weights):
            raise ValueError(f"weights must be > 0 (drop unused sources instead), got {list(weights)}")
        if seq_len <= 0:
            raise ValueError(f"train.seq_len: must be a positive integer, got {seq_len}")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.seq_len = int(seq_len)
        self.pad_id = int(pad_id)
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(sources))]
        self.atomic = list(atomic) if atomic is not None else [False] * len(sources)
        self.fingerprint = dict(fingerprint or {})
        self.document_aware = bool(document_aware)

    def __iter__(self) -> PackedMixtureIterator:
        return PackedMixtureIterator(self)

    def __str__(self) -> str:
        return f"PackedMixtureIterDataset(sources={self.names}, weights={self.weights}, seq_len={self.seq_len})"


class PackedMixtureIterator(grain.DatasetIterator):
    """Iterator of `PackedMixtureIterDataset` with exact `get_state()` / `set_state()`."""

    def __init__(self, ds: PackedMixtureIterDataset):
        super().__init__()
        self._ds = ds
        n = len(ds.sources)
        self._next = [0] * n  # next unread position in each source's stream
        self._offset = [-1] * n  # tokens already used of example next-1, or -1 when none is in progress
        self._consumed = [0] * n  # tokens placed in rows so far, per source
        self._rows = 0
        self._cache: list[Element | None] = [None] * n

    # ---- state -----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "sources": list(self._ds.names),
            "fingerprint": dict(self._ds.fingerprint),
            "next": list(self._next),
            "offset": list(self._offset),
            "consumed": list(self._consumed),
            "rows": self._rows,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state has version {state.get('version')!r}, expected {STATE_VERSION}")
        if list(state["sources"]) != self._ds.names:
            raise ValueError(f"data iterator state is for sources {state['sources']}, this pipeline has "
                             f"{self._ds.names} (were the data weights changed?)")
        saved = dict(state.get("fingerprint", {}))
        if saved != self._ds.fingerprint:
            diff = sorted(k for k in set(saved) | set(self._ds.fingerprint)
                          if saved.get(k) != self._ds.fingerprint.get(k))
            raise ValueError("data iterator state comes from a differently configured pipeline; differing: "
                             + ", ".join(f"{k} (state {saved.get(k)!r}, now {self._ds.fingerprint.get(k)!r})"
                                         for k in diff))
        n = len(self._ds.sources)
        for key in ("next", "offset", "consumed"):
            if len(state[key]) != n:
                raise ValueError(f"data iterator state field {key!r} has {len(state[key])} entries, expected {n}")
        self._next = [int(v) for v in state["next"]]
        self._offset = [int(v) for v in state["offset"]]
        self._consumed = [int(v) for v in state["consumed"]]
        self._rows = int(state["rows"])
        self._cache = [None] * n

    # ---- packing ---------------------------------------------------------------------------------
    def _fetch(self, s: int, position: int) -> Element:
        element = self._ds.sources[s][position]
        tokens = np.asarray(element[0], dtype=np.int32)
        mask = np.asarray(element[1], dtype=np.int32)
        starts = np.asarray(element[2] if len(element) > 2 else [0], dtype=np.int64)
        if tokens.shape != mask.shape or tokens.ndim != 1:
            raise ValueError(f"source {self._ds.names[s]!r}: tokens {tokens.shape} and loss mask {mask.shape} "
                             "must be 1-D arrays of the same length")
        return tokens, mask, starts

    def _current(self, s: int) -> Element:
        """The element of source s in progress, starting the next one if none is."""
        while self._offset[s] < 0:
            element = self._fetch(s, self._next[s])
            self._next[s] += 1
            if len(element[0]) > 0:
                self._cache[s] = element
                self._offset[s] = 0
        if self._cache[s] is None:  # restored from a state: re-read the element in progress
            self._cache[s] = self._fetch(s, self._next[s] - 1)
        return self._cache[s]

    def _example_end(self, s: int) -> tuple[int, bool]:
        """(end offset of the example at the current offset of source s, whether the offset is its start)."""
        tokens, _, starts = self._current(s)
        offset = self._offset[s]
        i = int(np.searchsorted(starts, offset, side="right"))
        end = int(starts[i]) if i < len(starts) else len(tokens)
        return end, bool(i > 0 and starts[i - 1] == offset)

    def _pick(self, candidates: Sequence[int]) -> int:
        weights = self._ds.weights
        return min(candidates, key=lambda s: (self._consumed[s] / weights[s], s))

    def __next__(self) -> dict[str, np.ndarray]:
        capacity = self._ds.seq_len + 1
        tokens = np.full(capacity, self._ds.pad_id, dtype=np.int32)
        mask = np.zeros(capacity, dtype=np.int32)
        segments = np.zeros(capacity, dtype=np.int32)
        positions = np.zeros(capacity, dtype=np.int32)
        all_sources = range(len(self._ds.sources))
        splittable = [s for s in all_sources if not self._ds.atomic[s]]
        fill, segment = 0, 0
        while fill < capacity:
            s = self._pick(all_sources)
            end, at_start = self._example_end(s)
            remaining = end - self._offset[s]
            space = capacity - fill
            if self._ds.atomic[s] and at_start and fill > 0 and space < remaining <= capacity:
                if not splittable:
                    break  # pad the rest; the example starts the next row
                s = self._pick(splittable)
                end, _ = self._example_end(s)
                remaining = end - self._offset[s]
            element_tokens, element_mask, _ = self._current(s)
            start = self._offset[s]
            take = min(remaining, space)
            segment += 1
            tokens[fill:fill + take] = element_tokens[start:start + take]
            mask[fill:fill + take] = element_mask[start:start + take]
            segments[fill:fill + take] = segment
            positions[fill:fill + take] = np.arange(take, dtype=np.int32)
            fill += take
            self._consumed[s] += take
            if start + take == len(element_tokens):
                self._offset[s] = -1
                self._cache[s] = None
            else:
                self._offset[s] = start + take
        self._rows += 1
        return rows_to_batch(tokens, mask, segments, positions, self._ds.document_aware)

    def __str__(self) -> str:
        return f"PackedMixtureIterator(rows={self._rows}, consumed={self._consumed})"

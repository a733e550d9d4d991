"""`--draft-budget`: nested self-speculative decoding in the server, as a `DecodeStrategy` (strategy.py).

Every served budget larger than the draft budget is decoded in rounds (inference/speculative_program.py): the draft
proposes k tokens per row, the served budget checks them in one pass, and only verified tokens reach the clients;
smaller budgets decode plainly. Each served slot batch gets a twin batch of the draft budget (its own caches, the
same rows, fed the same prompt pieces); the draft budget's weights are sliced once and shared by the twins.

A row's first token is sampled from the served budget's logits after its prompt, as plain decoding samples it;
from then on its caches hold its text but the last token (`last`), the state rounds start from. Sampling settings
and stop ids are per-row arrays, so one compiled program serves every mix of requests. Greedy output is the served
budget's own greedy text; sampled output follows its distribution (Leviathan et al.'s accept / resample).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.inference.engine import Engine
from elastic_jax.inference.slot_programs import sample_row
from elastic_jax.inference.slots import PROGRAMS, SlotBatch
from elastic_jax.inference.speculative_program import make_speculative_rows

log = logging.getLogger("elastic_jax.serve")
ROUND_KEYS = 0x5EC  # rounds sample from fold_in(row key, ROUND_KEYS), apart from the first token's key


@dataclasses.dataclass
class _Twin:
    """The draft's rows beside one served batch, and each row's pending token."""

    draft: SlotBatch
    last: np.ndarray  # [rows] the row's last token, not yet fed to either cache
    pending: np.ndarray  # [rows] whether `last` holds one (the row's first token has been sampled)
    rounds: np.ndarray  # [rows] rounds so far (the sampling key index)


def _first_tokens():
    """jit(logits [B, V], keys [B], emitted [B], temperature, top_k, top_p [B]) -> tokens [B]: each row's next token
    from the logits after its prompt, as the plain slot program samples it."""
    def run(logits, keys, emitted, temperature, top_k, top_p):
        keys_now = jax.vmap(jax.random.fold_in)(keys, emitted)
        return jax.vmap(sample_row)(logits, keys_now, temperature, top_k, top_p)
    return jax.jit(run)


class SpeculativeDecode:
    """Served budgets above `draft_budget` drafted `k` tokens at a time by it."""

    name = "speculative"

    def __init__(self, engine: Engine, draft_budget: float, k: int):
        self.engine, self.draft_budget, self.k = engine, float(draft_budget), int(k)
        self.draft_spec = engine.arch(draft_budget).spec
        self.weights = None  # the draft budget's sliced weights, on first use
        self.twins: dict[int, tuple[SlotBatch, _Twin]] = {}  # id(served batch) -> (batch, its twin)
        self.accepted: dict[float, int] = {}  # per served budget: drafts accepted, and drafted
        self.drafted: dict[float, int] = {}

    def drafts_for(self, slots: SlotBatch) -> bool:
        return slots.arch.spec != self.draft_spec and slots.arch.budget > self.draft_budget

    def _twin(self, slots: SlotBatch) -> _Twin:
        if id(slots) not in self.twins or self.twins[id(slots)][0] is not slots:
            draft = SlotBatch(self.engine, self.draft_budget, slots.rows, slots.capacity, self.weights)
            self.weights = draft.weights
            rows = slots.rows
            twin = _Twin(draft, np.zeros(rows, np.int32), np.zeros(rows, bool), np.zeros(rows, np.int32))
            self.twins = {key: value for key, value in self.twins.items() if value[0].busy}  # batches let go
            self.twins[id(slots)] = (slots, twin)
        return self.twins[id(slots)][1]

    def admitted(self, slots: SlotBatch, row: int) -> None:
        if self.drafts_for(slots):
            twin = self._twin(slots)
            twin.draft.clear(row)
            twin.pending[row], twin.rounds[row] = False, 0

    def fed(self, slots: SlotBatch, row: int, tokens: Sequence[int]) -> None:
        if self.drafts_for(slots):
            self._twin(slots).draft.feed(row, tokens)

    def released(self, slots: SlotBatch, row: int) -> None:
        if self.drafts_for(slots):
            self._twin(slots).pending[row] = False
            budget = slots.arch.budget
            if self.drafted.get(budget):
                log.info("budget %g drafted by %g: acceptance %.3f so far (%d of %d drafted tokens)", budget,
                         self.draft_budget, self.accepted[budget] / self.drafted[budget], self.accepted[budget],
                         self.drafted[budget])

    def acceptance(self) -> dict[str, float]:
        """Accepted drafts / drafted tokens per served budget (drafted by `draft_budget`)."""
        return {f"{b:g}<-{self.draft_budget:g}": self.accepted[b] / d for b, d in self.drafted.items() if d}

    def decode(self, slots: SlotBatch, steps: int) -> dict[int, list[int]]:
        if not self.drafts_for(slots):
            return slots.decode(steps)
        active = slots.decoding & (slots.left > 0)
        if not active.any():
            return {}
        twin = self._twin(slots)
        new = {int(r): [] for r in np.flatnonzero(active)}
        fresh = active & ~twin.pending
        if fresh.any():
            first = np.asarray(PROGRAMS.get(("first token", slots.cfg, slots.rows), _first_tokens)(
                slots.logits, slots.keys, jnp.asarray(slots.emitted), jnp.asarray(slots.temperature),
                jnp.asarray(slots.top_k), jnp.asarray(slots.top_p)))
            for r in np.flatnonzero(fresh):
                new[int(r)].append(int(first[r]))
            twin.last = np.where(fresh, first, twin.last).astype(np.int32)
            twin.pending |= fresh
            self._account(slots, fresh, fresh.astype(np.int32), first[:, None])
        rows = slots.decoding & (slots.left > 0) & twin.pending
        if rows.any():
            self._rounds(slots, twin, rows, steps, new)
        return new

    def _rounds(self, slots: SlotBatch, twin: _Twin, rows: np.ndarray, steps: int, new: dict) -> None:
        """Up to `steps` verified tokens for each of `rows`, appended to `new`."""
        key = ("speculative rows", self.engine.cfg, slots.arch.spec, self.draft_spec, slots.rows, slots.capacity,
               self.k, steps)
        fn = PROGRAMS.get(key, lambda: make_speculative_rows(self.engine.cfg, slots.arch.spec, self.draft_spec,
                                                             slots.rows, self.k, steps, slots.cfg.pad_token_id))
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(slots.keys, ROUND_KEYS)
        max_new = np.where(rows, np.minimum(slots.left, steps), 0).astype(np.int32)
        out, count, rounds, accepted, twin.draft.caches, slots.caches, last = fn(
            slots.weights, twin.draft.weights, slots.caches, twin.draft.caches, jnp.asarray(twin.last), keys,
            jnp.asarray(twin.rounds), jnp.asarray(~rows), jnp.asarray(max_new), jnp.asarray(slots.temperature),
            jnp.asarray(slots.top_k), jnp.asarray(slots.top_p), jnp.asarray(slots.stops))
        out, count, rounds, accepted = (np.asarray(x) for x in (out, count, rounds, accepted))
        for r in np.flatnonzero(rows):
            new[int(r)].extend(out[r, :count[r]].tolist())
        twin.last = np.where(rows, np.asarray(last), twin.last).astype(np.int32)
        twin.rounds = twin.rounds + rounds.astype(np.int32)
        budget = slots.arch.budget
        self.accepted[budget] = self.accepted.get(budget, 0) + int(accepted.sum())
        self.drafted[budget] = self.drafted.get(budget, 0) + self.k * int(rounds.sum())
        self._account(slots, rows, count.astype(np.int32), out)

    @staticmethod
    def _account(slots: SlotBatch, rows: np.ndarray, count: np.ndarray, out: np.ndarray) -> None:
        """The batch's bookkeeping after `count` new tokens per row (out [B, >= count]), as SlotBatch.decode keeps
        it: a row whose last token is one of its stop ids, or whose limit is reached, stops decoding."""
        count = np.where(rows, count, 0)
        slots.emitted += count
        slots.left -= count
        slots.lengths += count
        for r in np.flatnonzero(rows & (count > 0)):
            if slots.left[r] <= 0 or out[r, count[r] - 1] in slots.stops[r]:
                slots.decoding[r], slots.left[r] = False, 0


__all__ = ["SpeculativeDecode"]

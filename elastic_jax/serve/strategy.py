"""How the scheduler turns a slot batch's decoding rows into new tokens: the one place a decoding method plugs in.
`PlainDecode` runs the batch's own decode program. A speculative strategy (a nested draft budget proposing tokens
that the served budget verifies, `--draft-budget`) implements the same protocol: it is told when a row is
admitted, fed prompt tokens and released, so that it can keep the draft's own rows (caches of the draft budget) in
step with the served batch, and `decode` returns only verified tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from elastic_jax.inference.slots import SlotBatch


class DecodeStrategy(Protocol):
    name: str

    def admitted(self, slots: SlotBatch, row: int) -> None:
        """A request took `row` of `slots` (its cache is empty)."""

    def fed(self, slots: SlotBatch, row: int, tokens: Sequence[int]) -> None:
        """`tokens` of the row's prompt went into its cache."""

    def released(self, slots: SlotBatch, row: int) -> None:
        """The row's request ended; the row is free."""

    def decode(self, slots: SlotBatch, steps: int) -> dict[int, list[int]]:
        """Up to `steps` new tokens per decoding row of `slots` ({row: tokens}); rows that reached a stop id or
        their limit stop decoding, as `SlotBatch.decode` leaves them."""
        ...


class PlainDecode:
    """Every token from the served budget itself."""

    name = "plain"

    def admitted(self, slots: SlotBatch, row: int) -> None:
        pass

    def fed(self, slots: SlotBatch, row: int, tokens: Sequence[int]) -> None:
        pass

    def released(self, slots: SlotBatch, row: int) -> None:
        pass

    def decode(self, slots: SlotBatch, steps: int) -> dict[int, list[int]]:
        return slots.decode(steps)


__all__ = ["DecodeStrategy", "PlainDecode"]

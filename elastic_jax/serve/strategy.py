"""How the scheduler turns a slot batch's decoding rows into new tokens: the one place a decoding method plugs in.
`PlainDecode` runs the batch's own decode program; a speculative strategy (a nested draft budget proposing
tokens that the served budget verifies) implements the same `decode` and is chosen at start-up."""

from __future__ import annotations

from typing import Protocol

from elastic_jax.inference.slots import SlotBatch


class DecodeStrategy(Protocol):
    name: str

    def decode(self, slots: SlotBatch, steps: int) -> dict[int, list[int]]:
        """Up to `steps` new tokens per decoding row of `slots` ({row: tokens}); rows that reached a stop id or
        their limit stop decoding, as `SlotBatch.decode` leaves them."""
        ...


class PlainDecode:
    """Every token from the served budget itself."""

    name = "plain"

    def decode(self, slots: SlotBatch, steps: int) -> dict[int, list[int]]:
        return slots.decode(steps)


__all__ = ["DecodeStrategy", "PlainDecode"]

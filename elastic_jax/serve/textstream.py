"""Tokens -> text as it is made: an incremental detokenizer that holds back what may still change (an unfinished
UTF-8 character, the start of a stop string) and ends the text at the first stop string."""

from __future__ import annotations

from collections.abc import Callable, Sequence

INCOMPLETE = "\ufffd"  # what decoding renders an unfinished multi-byte character as


class TextStream:
    """One request's output text; `push` new token ids, read back the text that is final so far."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = (), skip_ids: Sequence[int] = ()):
        self.decode, self.stops, self.skip = decode, tuple(stops), frozenset(skip_ids)
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # everything decoded, cut at a stop string once one is seen
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, ids: Sequence[int]) -> str:
        """The newly final text after these tokens; sets `stopped` when a stop string appeared (the text ends
        before it)."""
        if self.stopped:
            return ""
        self.ids += [i for i in ids if i not in self.skip]
        self.text = self.decode(self.ids)
        start = max(0, self.sent - self.holdback)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            return self.flush()
        final = len(self.text.rstrip(INCOMPLETE)) - self.holdback
        if final <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:final], final
        return out

    def flush(self) -> str:
        """All text not handed out yet (at the end of the request)."""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


__all__ = ["TextStream"]

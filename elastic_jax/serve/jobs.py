"""A request as the scheduler tracks it: where it sits (waiting, prefilling, decoding), its text so far, its
timings, and the events it sends back to the HTTP side (accepted, text, done, error)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from elastic_jax.inference.slots import SlotBatch
from elastic_jax.serve.errors import ApiError
from elastic_jax.serve.protocol import GenRequest
from elastic_jax.serve.textstream import TextStream

STOP, LENGTH, ABORT = "stop", "length", "abort"  # abort: the client went away (never sent to anyone)


@dataclasses.dataclass(eq=False)
class Job:
    req: GenRequest
    emit: Callable[[dict[str, Any]], None]  # thread-safe: hands an event to the request's HTTP handler
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    budget: float | None = None  # the budget serving it, once accepted
    model_id: str = ""
    slots: SlotBatch | None = None
    row: int = -1
    fed: int = 0  # prompt tokens in the cache
    generated: int = 0
    text: TextStream | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False

    @property
    def prefilling(self) -> bool:
        return self.slots is not None and self.fed < len(self.req.prompt)

    def accept(self, budget: float, model_id: str, text: TextStream) -> None:
        self.budget, self.model_id, self.text = budget, model_id, text
        self.emit({"type": "accepted", "model": model_id})

    def fail(self, error: ApiError) -> None:
        self.finished = True
        self.emit({"type": "error", "error": error})

    def tokens(self, ids: list[int], now: float) -> None:
        """New tokens from a decode call: their final text goes out at once."""
        self.generated += len(ids)
        self.first_token_at = self.first_token_at or now
        self.last_token_at = now
        delta = self.text.push(ids)
        if delta:
            self.emit({"type": "text", "text": delta})

    def usage(self) -> dict[str, int]:
        prompt = len(self.req.prompt)
        return {"prompt_tokens": prompt, "completion_tokens": self.generated, "total_tokens": prompt + self.generated}

    def finish(self, reason: str) -> None:
        self.finished = True
        if reason == ABORT:
            return
        rest = self.text.flush() if self.text else ""
        if rest:
            self.emit({"type": "text", "text": rest})
        self.emit({"type": "done", "finish_reason": reason, "usage": self.usage()})


__all__ = ["ABORT", "LENGTH", "STOP", "Job"]

"""OpenAI's response objects for completions and chat completions, whole and as streamed chunks (SSE)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from elastic_jax.serve.protocol import CHAT

DONE = "data: [DONE]\n\n"


class ResponseWriter:
    """The objects of one request: one id and creation time shared by every chunk."""

    def __init__(self, kind: str, model: str):
        self.chat, self.model = kind == CHAT, model
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _object(self, choices: list[dict[str, Any]], stream: bool, usage: dict | None = None) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if stream and self.chat else "")
        out: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                               "choices": choices}
        if usage is not None or not stream:
            out["usage"] = usage
        return out

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        choice.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        return self._object([choice], stream=False, usage=usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False) -> str:
        """One SSE event carrying new text (or, with finish_reason, the end of the choice)."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return event(self._object([choice], stream=True))

    def usage_chunk(self, usage: dict[str, int]) -> str:
        """The last chunk when the client asked for stream_options.include_usage: no choices, the usage."""
        return event(self._object([], stream=True, usage=usage))


def event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


__all__ = ["DONE", "ResponseWriter", "event"]

"""Request bodies of /v1/completions and /v1/chat/completions -> one validated `GenRequest`, or an ApiError whose
message names the field at fault. Fields a request may carry that change nothing here (user, logit_bias of {},
penalties of 0) are accepted; unknown fields are ignored, as OpenAI's and vLLM's servers do."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

from elastic_jax.data.chat import check_messages
from elastic_jax.serve.errors import ApiError, bad_field

COMPLETION, CHAT = "text_completion", "chat.completion"
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for completions
MAX_STOPS = 4  # stop strings per request, as OpenAI allows


@dataclasses.dataclass(frozen=True)
class GenRequest:
    kind: str  # COMPLETION or CHAT
    model: str  # as the client named it
    budget: float | None  # None: the server chooses (@auto)
    prompt: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (load tests)


def _number(body: dict, name: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_field(name, f"must be a number, got {value!r}")
    if value > high or value < low or (open_low and value == low):
        raise bad_field(name, f"must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise bad_field(name, f"must be in [{low}, {high}], got {value}")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_field(name, f"must be true or false, got {value!r}")
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad_field("stop", f"must be a non-empty string or a list of at most {MAX_STOPS} of them, got {stop!r}")
    return tuple(stops)


def _unsupported(body: dict) -> None:
    """Settings this server does not implement are refused, not silently ignored."""
    if body.get("n", 1) != 1:
        raise bad_field("n", f"only n=1 is served, got {body.get('n')!r}")
    if body.get("best_of") not in (None, 1):
        raise bad_field("best_of", f"only best_of=1 is served, got {body.get('best_of')!r}")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad_field(name, f"is not supported (only 0), got {body.get(name)!r}")
    for name in ("logprobs", "top_logprobs", "tools", "suffix"):
        if body.get(name) not in (None, False, 0, [], ""):
            raise bad_field(name, "is not supported by this server")
    if body.get("echo"):
        raise bad_field("echo", "is not supported by this server")


def _prompt(body: dict, kind: str, encode: Callable[[str], list[int]], chat: Callable[[list], list[int]],
            vocab: int) -> list[int]:
    if kind == CHAT:
        try:
            return chat(check_messages(body.get("messages"), "messages"))
        except ValueError as err:
            raise ApiError(400, str(err), param="messages") from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str) and prompt:
        return encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < vocab for t in prompt):
            raise bad_field("prompt", f"token ids must be in [0, {vocab - 1}]")
        return list(prompt)
    raise bad_field("prompt", "must be a non-empty string or a non-empty list of token ids (one prompt per request)")


def parse_request(body: Any, kind: str, *, parse_model: Callable[[Any], float | None],
                  encode: Callable[[str], list[int]], chat: Callable[[list], list[int]], vocab: int,
                  context: int) -> GenRequest:
    """A GenRequest from a decoded JSON body; `context` is the most tokens a sequence may hold (prompt + output)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    if "model" not in body:
        raise bad_field("model", "is required")
    budget = parse_model(body["model"])
    _unsupported(body)
    prompt = _prompt(body, kind, encode, chat, vocab)
    if len(prompt) >= context:
        raise bad_field("prompt" if kind == COMPLETION else "messages",
                        f"the prompt is {len(prompt)} tokens; this server's context is {context} tokens "
                        f"(prompt + max_tokens), so it must be shorter")
    room = context - len(prompt)
    name = "max_completion_tokens" if kind == CHAT and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, None, 1, 2**31 - 1)
    if max_tokens is not None and max_tokens > room:
        raise bad_field(name, f"{max_tokens} tokens requested, but the prompt is {len(prompt)} tokens and the context "
                              f"{context}: at most {room}")
    if max_tokens is None:
        max_tokens = min(room, DEFAULT_COMPLETION_TOKENS) if kind == COMPLETION else room
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and isinstance(options.get("include_usage", False),
                                                                              bool)):
        raise bad_field("stream_options", f"must be an object such as {{'include_usage': true}}, got {options!r}")
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    return GenRequest(
        kind=kind, model=body["model"], budget=budget, prompt=tuple(prompt), max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0,
                                                                                open_low=True),
        top_k=max(_integer(body, "top_k", 0, -1, vocab), 0),  # vLLM's -1 and 0 both mean off
        seed=random.getrandbits(31) if seed is None else seed % 2**31, stop=_stops(body),
        stream=_flag(body, "stream"), include_usage=bool((options or {}).get("include_usage", False)),
        ignore_eos=_flag(body, "ignore_eos"))


__all__ = ["CHAT", "COMPLETION", "GenRequest", "parse_request"]

"""Chat conversations -> (tokens, loss mask) with loss only on the assistant's turns.

Two templates:
- "simple", built in, for any tokenizer (the byte tokenizer's only one). A conversation renders as

      <s><|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}</s>\\n<|user|>\\n...

  where `<s>` / `</s>` are the tokenizer's bos / eos ids (not their strings) and each role header is plain text.
  The loss covers each assistant content and the eos after it, so the model learns to end its turn.
- a Hugging Face Jinja chat template: the tokenizer's own (`chat_template` in the tokenizer_config.json beside
  its tokenizer.json, or a chat_template.jinja there), or a file named by data.chat_template. Turns are found by
  rendering growing prefixes of the conversation: an assistant turn's tokens are what rendering it adds after the
  generation prompt (its header), so exactly the assistant's text and end-of-turn marker carry loss. A template
  whose rendering of a prefix is not a prefix of the whole (one that rewrites earlier turns) is refused.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elastic_jax.data.tokenizer import HFTokenizer, Tokenizer

SIMPLE = "simple"
ASSISTANT = "assistant"
Piece = tuple[str | list[int], bool]  # text (or token ids), and whether its tokens carry loss


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The conversation as a list of {"role", "content"} string dicts, or a ValueError naming `where`."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list of {{'role', 'content'}} objects, "
                         f"got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: message {i} must have string 'role' and 'content', got {message!r}")
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def simple_pieces(messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
                  add_generation_prompt: bool = False) -> list[Piece]:
    """The built-in template as pieces (see the module docstring)."""
    pieces: list[Piece] = [([tokenizer.bos_id], False)]
    for message in messages:
        pieces.append((f"<|{message['role']}|>\n", False))
        if message["role"] == ASSISTANT:
            pieces += [(message["content"], True), ([tokenizer.eos_id], True), ("\n", False)]
        else:
            pieces.append((message["content"] + "\n", False))
    if add_generation_prompt:
        pieces.append((f"<|{ASSISTANT}|>\n", False))
    return pieces


def _template_text(path: Path) -> str | None:
    """A chat template from a .jinja file, a tokenizer_config.json, or a directory holding either."""
    if path.is_dir():
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            found = _template_text(path / name)
            if found is not None:
                return found
        return None
    if not path.is_file():
        return None
    if path.suffix != ".json":
        return path.read_text(encoding="utf-8")
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def resolve_template(spec: str | None, tokenizer: Tokenizer) -> str | None:
    """The Jinja source to render chats with, or None for the built-in simple template.

    spec None: the tokenizer's own template when it has one (a Hugging Face tokenizer loaded from a directory
    or file whose tokenizer_config.json / chat_template.jinja holds one), else the simple template.
    spec "simple": the simple template. Any other spec: a .jinja file, tokenizer_config.json or directory.
    """
    if spec is not None and spec.strip().lower() == SIMPLE:
        return None
    if spec is None:
        source = getattr(tokenizer, "source", None) if isinstance(tokenizer, HFTokenizer) else None
        return _template_text(Path(source).parent) if source and Path(source).exists() else None
    template = _template_text(Path(os.path.expanduser(spec)))
    if template is None:
        raise ValueError(f"data.chat_template: {spec} holds no chat template (expected 'simple', a .jinja file, "
                         "or a tokenizer_config.json / directory with a chat_template)")
    return template


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("data.chat_template: rendering a Hugging Face chat template needs jinja2: "
                          "pip install 'elastic_jax[data]' (or set data.chat_template='simple')") from None

    def raise_exception(message):
        raise ValueError(f"data.chat_template: the template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    return env.from_string(template)


def _render(template: str, messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
            add_generation_prompt: bool) -> str:
    special = {"bos_token": tokenizer.decode([tokenizer.bos_id]), "eos_token": tokenizer.decode([tokenizer.eos_id]),
               "pad_token": tokenizer.decode([tokenizer.pad_id])}
    return _compile(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **special)


def template_pieces(template: str, messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer) -> list[Piece]:
    """A Jinja template's rendering as pieces, assistant turns (after their header) marked for loss."""
    pieces: list[Piece] = []
    done = ""  # the rendering of the messages handled so far

    def extend(text: str, trainable: bool) -> None:
        nonlocal done
        if not text.startswith(done):
            raise ValueError("data.chat_template: rendering a conversation's first turns does not give a prefix of "
                             "rendering it whole (the template rewrites earlier turns); loss masks need a template "
                             "that appends turn by turn, e.g. data.chat_template='simple'")
        if len(text) > len(done):
            pieces.append((text[len(done):], trainable))
        done = text

    if messages and messages[0]["role"] != ASSISTANT:
        extend("", False)
    for k, message in enumerate(messages):
        if message["role"] == ASSISTANT:
            extend(_render(template, messages[:k], tokenizer, add_generation_prompt=True), False)
            extend(_render(template, messages[:k + 1], tokenizer, add_generation_prompt=False), True)
        else:
            extend(_render(template, messages[:k + 1], tokenizer, add_generation_prompt=False), False)
    return pieces


def encode_pieces(pieces: Sequence[Piece], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) int32 arrays: each piece's tokens, masked 1 where the piece is trainable."""
    tokens: list[int] = []
    mask: list[int] = []
    for content, trainable in pieces:
        ids = list(content) if isinstance(content, list) else tokenizer.encode(content)
        tokens += ids
        mask += [int(trainable)] * len(ids)
    return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=np.int32)


def encode_chat(messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
                template: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) of a conversation: `template` is Jinja source, or None for the simple template."""
    messages = check_messages(messages, "chat")
    pieces = simple_pieces(messages, tokenizer) if template is None else template_pieces(template, messages, tokenizer)
    return encode_pieces(pieces, tokenizer)


def chat_prompt(messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer, template: str | None = None) -> list[int]:
    """Token ids of a conversation followed by the assistant's header: the prompt to generate its next turn."""
    messages = check_messages(messages, "chat")
    if template is None:
        return encode_pieces(simple_pieces(messages, tokenizer, add_generation_prompt=True), tokenizer)[0].tolist()
    return tokenizer.encode(_render(template, messages, tokenizer, add_generation_prompt=True))


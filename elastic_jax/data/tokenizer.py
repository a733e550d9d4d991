"""Tokenizers with one small interface: a dependency-free byte-level tokenizer and a Hugging Face wrapper.

Both expose the same special ids (pad, bos, eos, `<think>`, `</think>`) so the reasoning task and the
packing pipeline never care which one is in use, and both serialise to a dict so a checkpoint can record
exactly which tokenizer produced its training data.
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

THINK = "<think>"
END_THINK = "</think>"
_THINK_SPLIT = re.compile(f"({re.escape(THINK)}|{re.escape(END_THINK)})")


class Tokenizer(abc.ABC):
    """Common interface: special ids, `encode`/`decode`, and `to_dict` for checkpoints."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    @property
    @abc.abstractmethod
    def think_id(self) -> int:
        """Id of `<think>` (raises ValueError when the vocabulary has none)."""

    @property
    @abc.abstractmethod
    def end_think_id(self) -> int:
        """Id of `</think>` (raises ValueError when the vocabulary has none)."""

    @property
    @abc.abstractmethod
    def eos_token(self) -> str:
        """The string `decode(..., skip_special=False)` renders the eos id as."""

    @abc.abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Encode text that contains no `<think>`/`</think>` literals."""

    @abc.abstractmethod
    def _think_ids(self) -> tuple[int | None, int | None]:
        """The `<think>`/`</think>` ids, or None where the vocabulary lacks them."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Turn ids back into text (invalid bytes become U+FFFD)."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description that `tokenizer_from_dict` turns back into this tokenizer."""

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; the literal strings `<think>` and `</think>` become their special ids."""
        think, end_think = self._think_ids()
        ids: list[int] = [self.bos_id] if add_bos else []
        for piece in _THINK_SPLIT.split(text):
            if not piece:
                continue
            if piece == THINK and think is not None:
                ids.append(think)
            elif piece == END_THINK and end_think is not None:
                ids.append(end_think)
            else:
                ids.extend(self._encode_plain(piece))
        if add_eos:
            ids.append(self.eos_id)
        return ids


class ByteTokenizer(Tokenizer):
    """Byte-level tokenizer: five special ids first, then the 256 byte values at ids 5..260.

    Needs no files, covers every string, and keeps the vocabulary tiny, which suits small test models.
    """

    PAD_ID = 0
    BOS_ID = 1
    EOS_ID = 2
    THINK_ID = 3
    END_THINK_ID = 4
    NUM_SPECIAL = 5
    SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", THINK, END_THINK)
    VOCAB_SIZE = NUM_SPECIAL + 256

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    @property
    def think_id(self) -> int:
        return self.THINK_ID

    @property
    def end_think_id(self) -> int:
        return self.END_THINK_ID

    @property
    def eos_token(self) -> str:
        return self.SPECIAL_TOKENS[self.EOS_ID]

    def _think_ids(self) -> tuple[int | None, int | None]:
        return self.THINK_ID, self.END_THINK_ID

    def _encode_plain(self, text: str) -> list[int]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.NUM_SPECIAL
        return data.tolist()

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Decode ids; ids outside the vocabulary (e.g. from a padded model vocab) become U+FFFD."""
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if self.NUM_SPECIAL <= i < self.VOCAB_SIZE:
                pending.append(i - self.NUM_SPECIAL)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if 0 <= i < self.NUM_SPECIAL:
                if not skip_special:
                    out.append(self.SPECIAL_TOKENS[i])
            else:
                out.append("\ufffd")
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# Token strings tried, in order, when a Hugging Face tokenizer does not name its specials.
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "[BOS]", "<|startoftext|>", "<|im_start|>")
_EOS_CANDIDATES = ("</s>", "<|end_of_text|>", "<eos>", "[EOS]", "<|endoftext|>", "<|im_end|>")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")


def _config_token(value: Any) -> str | None:
    """A special token entry of tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (via the `tokenizers` package) behind the same interface.

    Special tokens are looked up by string: explicit arguments first, then `tokenizer_config.json` next to
    the file, then common names. bos and eos are required; pad falls back to eos; `<think>`/`</think>` are
    only required when used (the reasoning task), and raise a clear error then.
    """

    def __init__(self, tokenizer_json: str, *, source: str = "<string>", bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None):
        from tokenizers import Tokenizer as _HFTok

        self._json = tokenizer_json
        self.source = source
        try:
            self._tok = _HFTok.from_str(tokenizer_json)
        except Exception as e:  # the Rust side raises a plain Exception
            raise ValueError(f"data.tokenizer: {source} is not a valid tokenizer.json ({e})") from e
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_token = self._resolve("bos", bos_token, _BOS_CANDIDATES)
        self._eos_token = self._resolve("eos", eos_token, _EOS_CANDIDATES)
        try:
            self.pad_token = self._resolve("pad", pad_token, _PAD_CANDIDATES)
        except ValueError:
            self.pad_token = self._eos_token
        self.bos_id = self._id(self.bos_token)
        self.eos_id = self._id(self._eos_token)
        self.pad_id = self._id(self.pad_token)
        self._think = self._tok.token_to_id(THINK)
        self._end_think = self._tok.token_to_id(END_THINK)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **special_tokens: str | None) -> HFTokenizer:
        """Load `path` (a tokenizer.json, or a directory holding one); reads a sibling tokenizer_config.json."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"data.tokenizer: {path} does not exist")
        config_path = path.parent / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                config = {}
            for key in ("bos_token", "eos_token", "pad_token"):
                if special_tokens.get(key) is None:
                    special_tokens[key] = _config_token(config.get(key))
        return cls(path.read_text(encoding="utf-8"), source=str(path), **special_tokens)

    def _resolve(self, kind: str, given: str | None, candidates: Sequence[str]) -> str:
        if given is not None:
            if self._tok.token_to_id(given) is None:
                raise ValueError(f"data.tokenizer: {self.source}: {kind} token {given!r} is not in the vocabulary")
            return given
        for token in candidates:
            if self._tok.token_to_id(token) is not None:
                return token
        raise ValueError(f"data.tokenizer: {self.source}: no {kind} token found (tried {list(candidates)}); "
                         f"pass {kind}_token=... or add one to tokenizer_config.json")

    def _id(self, token: str) -> int:
        return int(self._tok.token_to_id(token))

    def _require(self, token: str, value: int | None) -> int:
        if value is None:
            raise ValueError(f"data.tokenizer: {self.source} has no {token!r} token, which the reasoning task needs; "
                             "add it as a special token or set data.reasoning_weight=0")
        return int(value)

    @property
    def think_id(self) -> int:
        return self._require(THINK, self._think)

    @property
    def end_think_id(self) -> int:
        return self._require(END_THINK, self._end_think)

    @property
    def eos_token(self) -> str:
        return self._eos_token

    def _think_ids(self) -> tuple[int | None, int | None]:
        return self._think, self._end_think

    def _encode_plain(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hf", "tokenizer_json": self._json, "source": self.source, "bos_token": self.bos_token,
                "eos_token": self._eos_token, "pad_token": self.pad_token}

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"


def tokenizer_from_dict(data: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output (e.g. as stored in a checkpoint)."""
    kind = data.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        return HFTokenizer(data["tokenizer_json"], source=data.get("source", "<checkpoint>"),
                           bos_token=data.get("bos_token"), eos_token=data.get("eos_token"),
                           pad_token=data.get("pad_token"))
    raise ValueError(f"data.tokenizer: unknown tokenizer kind {kind!r}; expected 'byte' or 'hf'")


def load_tokenizer(spec: str | os.PathLike | Mapping[str, Any] | None) -> Tokenizer:
    """None or "byte" -> ByteTokenizer; a tokenizer.json (or a directory with one) -> HFTokenizer.

    A mapping is treated as `to_dict()` output.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "byte")):
        return ByteTokenizer()
    if isinstance(spec, Mapping):
        return tokenizer_from_dict(spec)
    path = Path(os.path.expanduser(os.fspath(spec)))
    if not path.exists():
        raise ValueError(f"data.tokenizer: {spec} does not exist (expected 'byte', a tokenizer.json file, "
                         "or a directory containing one)")
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        raise ValueError(f"data.tokenizer: directory {spec} has no tokenizer.json")
    return HFTokenizer.from_file(path)

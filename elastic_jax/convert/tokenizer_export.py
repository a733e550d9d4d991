"""Tokenizer files for a Hugging Face export, so that `AutoTokenizer.from_pretrained(export_dir)` works.

The byte tokenizer (elastic_jax/data/tokenizer.py) is written as a `tokenizer.json` that encodes and decodes
exactly as ours: a byte-level BPE with no merges (each UTF-8 byte is one token, ids 5..260, spelled with GPT-2's
byte-to-unicode characters as every byte-level tokenizer does), the five specials at ids 0..4 as added special
tokens (`<think>` and `</think>` are matched in text, as our `encode` does), and a post-processor that prepends
`<s>` (ours with add_bos=True). One difference: transformers also matches the literal strings `<pad>`, `<s>` and
`</s>` in text as their special tokens, where ours spells them out as bytes. A Hugging Face tokenizer
(`HFTokenizer`) is written back unchanged, its `tokenizer.json` byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastic_jax.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer and decoder use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer_json() -> dict[str, Any]:
    """The byte tokenizer as a `tokenizers` JSON document."""
    bt = ByteTokenizer
    vocab = {tok: i for i, tok in enumerate(bt.SPECIAL_TOKENS)}
    vocab.update({ch: b + bt.NUM_SPECIAL for b, ch in bytes_to_unicode().items()})
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, tok in enumerate(bt.SPECIAL_TOKENS)]
    bos = bt.SPECIAL_TOKENS[bt.BOS_ID]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {bos: {"id": bos, "ids": [bt.BOS_ID], "tokens": [bos]}},
        },
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def _config(bos: str, eos: str, pad: str, extra: list[str]) -> dict[str, Any]:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
            "additional_special_tokens": extra, "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000}


def write_tokenizer(tokenizer: Tokenizer, path: str | Path) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for `tokenizer` into `path`."""
    path = Path(path)
    if isinstance(tokenizer, ByteTokenizer):
        text = json.dumps(byte_tokenizer_json(), ensure_ascii=False, indent=1)
        names = ByteTokenizer.SPECIAL_TOKENS
        config = _config(names[ByteTokenizer.BOS_ID], names[ByteTokenizer.EOS_ID], names[ByteTokenizer.PAD_ID],
                         [names[ByteTokenizer.THINK_ID], names[ByteTokenizer.END_THINK_ID]])
    elif isinstance(tokenizer, HFTokenizer):
        text = tokenizer.to_dict()["tokenizer_json"]
        config = _config(tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, [])
    else:
        raise TypeError(f"write_tokenizer: unsupported tokenizer {tokenizer!r}")
    files = [path / "tokenizer.json", path / "tokenizer_config.json", path / "special_tokens_map.json"]
    files[0].write_text(text, encoding="utf-8")
    files[1].write_text(json.dumps(config, indent=1), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "additional_special_tokens")}
    files[2].write_text(json.dumps(special, indent=1), encoding="utf-8")
    return files


__all__ = ["byte_tokenizer_json", "write_tokenizer"]

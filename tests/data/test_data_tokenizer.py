"""Byte and Hugging Face tokenizers: round trips, special ids, loading and serialisation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_jax.data import ByteTokenizer, HFTokenizer, load_tokenizer, tokenizer_from_dict
from elastic_jax.data.reasoning import ReasoningTaskConfig, encode_example, make_example

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


def test_byte_specials_and_vocab():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.think_id, tok.end_think_id) == (0, 1, 2, 3, 4)
    assert (ByteTokenizer.PAD_ID, ByteTokenizer.BOS_ID, ByteTokenizer.EOS_ID) == (0, 1, 2)
    assert (ByteTokenizer.THINK_ID, ByteTokenizer.END_THINK_ID) == (3, 4)
    assert tok.vocab_size == 261
    assert tok.encode("A") == [ord("A") + 5]
    assert tok.encode("\x00\xff".encode("latin-1").decode("latin-1")) == [5, 0xC3 + 5, 0xBF + 5]


def test_byte_encode_think_literals_and_bos_eos():
    tok = ByteTokenizer()
    ids = tok.encode("a<think>b</think>c", add_bos=True, add_eos=True)
    assert ids == [1, ord("a") + 5, 3, ord("b") + 5, 4, ord("c") + 5, 2]
    assert tok.decode(ids) == "<s>a<think>b</think>c</s>"
    assert tok.decode(ids, skip_special=True) == "abc"
    assert tok.encode("<thin") == [c + 5 for c in b"<thin"]


def test_byte_decode_bad_input_is_replaced():
    tok = ByteTokenizer()
    assert tok.decode([0xFF + 5]) == "\ufffd"  # invalid UTF-8
    assert tok.decode([ord("a") + 5, 999, ord("b") + 5]) == "a\ufffdb"  # outside the vocabulary


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True), skip_special=True) == text.replace(
        "<think>", "").replace("</think>", "")


def test_load_tokenizer_byte_and_errors(tmp_path):
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match=r"data\.tokenizer: .*does not exist"):
        load_tokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"data\.tokenizer: .*no tokenizer\.json"):
        load_tokenizer(str(tmp_path))
    assert isinstance(tokenizer_from_dict(json.loads(json.dumps(ByteTokenizer().to_dict()))), ByteTokenizer)
    with pytest.raises(ValueError, match="data.tokenizer"):
        tokenizer_from_dict({"kind": "sentencepiece"})


def test_hf_tokenizer_specials_and_round_trip(bpe_json):
    for spec in (bpe_json, bpe_json.parent, str(bpe_json)):
        tok = load_tokenizer(spec)
        assert isinstance(tok, HFTokenizer)
    raw = tok._tok
    assert tok.pad_id == raw.token_to_id("<pad>")
    assert tok.bos_id == raw.token_to_id("<s>")
    assert tok.eos_id == raw.token_to_id("</s>")
    assert tok.think_id == raw.token_to_id("<think>")
    assert tok.end_think_id == raw.token_to_id("</think>")
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    text = "def add(a, b):\n    return a + b  # ünïcode"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("x<think>y</think>z", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.think_id in ids and tok.end_think_id in ids
    assert tok.decode(ids, skip_special=True) == "xyz"


def test_hf_tokenizer_serialises(bpe_json):
    tok = load_tokenizer(bpe_json)
    restored = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    text = "import numpy as np <think>1+1=2</think>2"
    assert restored.encode(text) == tok.encode(text)
    assert (restored.bos_id, restored.eos_id, restored.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_hf_tokenizer_encodes_reasoning(bpe_json):
    tok = load_tokenizer(bpe_json)
    example = make_example(3, "train", ReasoningTaskConfig())
    tokens, mask = encode_example(example, tok)
    assert tok.decode(tokens, skip_special=True) == example.prompt + example.trace + example.answer
    assert tok.decode(tokens[mask == 1]) == example.trace + "</think>" + example.answer + "</s>"


def test_hf_tokenizer_missing_specials(tmp_path, make_bpe):
    no_think = make_bpe(tmp_path / "a" / "tokenizer.json", ["<pad>", "<s>", "</s>"])
    tok = load_tokenizer(no_think)
    with pytest.raises(ValueError, match=r"data\.tokenizer: .*'<think>'"):
        _ = tok.think_id
    no_bos = make_bpe(tmp_path / "b" / "tokenizer.json", ["<pad>", "</s>"])
    with pytest.raises(ValueError, match=r"data\.tokenizer: .*no bos token"):
        load_tokenizer(no_bos)
    # Named in tokenizer_config.json: used instead of the built-in guesses.
    (no_bos.parent / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<pad>", "eos_token": {"content": "</s>"}}))
    tok = load_tokenizer(no_bos.parent)
    assert tok.bos_id == tok._tok.token_to_id("<pad>")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer.from_file(no_bos, bos_token="<nope>")


def test_hf_tokenizer_invalid_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"data\.tokenizer: .*not a valid tokenizer\.json"):
        load_tokenizer(bad)

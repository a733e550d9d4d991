"""Exports run where users load them: tokenizer files transformers' AutoTokenizer reads (encoding and decoding as
ours), and a sliced bf16 MoE budget (widths aligned for the grouped expert matmul) that AutoModelForCausalLM
loads and generates from with default settings."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from elastic_jax.cli import main
from elastic_jax.convert.tokenizer_export import byte_tokenizer_json, write_tokenizer
from elastic_jax.data.tokenizer import ByteTokenizer, HFTokenizer, tokenizer_from_dict
from elastic_jax.model_io import read_metadata

TEXTS = ["(3+4)*2=<think>3+4=7, 7*2=14</think>14", "héllo wörld ☃ 日本語 🙂\n\ttabs  spaces", "a</think>b<think>",
         "", "\x00\x7f bytes"]


def test_byte_tokenizer_loads_in_autotokenizer_and_agrees(tmp_path):
    write_tokenizer(ByteTokenizer(), tmp_path)
    hf, ours = AutoTokenizer.from_pretrained(tmp_path), ByteTokenizer()
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, len(hf)) == (1, 2, 0, ByteTokenizer.VOCAB_SIZE)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=True)
        assert hf(text)["input_ids"] == ids, text
        assert hf.encode(text, add_special_tokens=False) == ours.encode(text), text
        assert hf.decode(ids) == ours.decode(ids), text
        assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special=True), text
    raw = bytes(range(256)).decode("latin-1")  # every byte id decodes through the byte-level decoder
    every = ours.encode(raw)
    assert hf.decode(every) == ours.decode(every)


def test_hf_tokenizer_passes_through_unchanged(tmp_path):
    text = json.dumps(byte_tokenizer_json())
    tok = HFTokenizer(text, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    write_tokenizer(tok, tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == text
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "<pad>")


@pytest.mark.parametrize("budget", [0.4])
def test_sliced_bf16_moe_budget_runs_in_transformers_defaults(elastic_checkpoint, tmp_path, budget):
    out = tmp_path / "hf"
    assert main(["export-hf", "--checkpoint", str(elastic_checkpoint), "--budget", str(budget), "--dtype",
                 "bfloat16", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "moe" in config["layers_block_type"]
    for key in ("hidden_size", "moe_intermediate_size", "moe_shared_expert_intermediate_size", "intermediate_size"):
        assert config[key] % 8 == 0, (key, config[key])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)  # default attention and MoE implementations
    assert model.dtype == torch.bfloat16
    ours = tokenizer_from_dict(read_metadata(elastic_checkpoint)["tokenizer"])
    inputs = tokenizer(["(3+4)*2=<think>"], return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0]
    prompt_len = inputs["input_ids"].shape[1]
    assert tokens[:prompt_len].tolist() == inputs["input_ids"][0].tolist()  # the prompt, then the continuation
    new = tokens[prompt_len:].tolist()
    # 8 new tokens, or fewer ending at end-of-sequence (generate's only early stop)
    assert len(new) == 8 or (1 <= len(new) < 8 and new[-1] == ours.eos_id), new
    assert np.all(tokens.numpy() < config["vocab_size"])
    assert tokenizer.decode(tokens) == ours.decode(tokens.tolist(), skip_special=False)

"""Every budget of an elastic checkpoint, exported in bf16, runs where users load it: AutoTokenizer and
AutoModelForCausalLM read the directory with transformers' defaults (attention and MoE implementations, the dtype
the config names) and generate. Token-level parity with transformers is tests/convert/test_hf_parity.py's (float32)."""

import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from elastic_jax.cli import main
from elastic_jax.data.tokenizer import tokenizer_from_dict
from elastic_jax.model_io import read_metadata

PROMPT = "(3+4)*2=<think>"


def test_every_budget_exported_in_bf16_loads_and_generates_with_defaults(elastic_checkpoint, tmp_path):
    meta = read_metadata(elastic_checkpoint)
    budgets = sorted((float(b) for b in meta["elastic"]["specs"]), reverse=True)
    assert budgets == [1.0, 0.7, 0.4]
    ours = tokenizer_from_dict(meta["tokenizer"])
    sizes = []
    for budget in budgets:
        out = tmp_path / f"hf_{budget:g}"
        assert main(["export-hf", "--checkpoint", str(elastic_checkpoint), "--budget", str(budget), "--dtype",
                     "bfloat16", "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.dtype == torch.bfloat16
        inputs = tokenizer([PROMPT], return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == ours.encode(PROMPT, add_bos=True)  # the training tokenizer's ids
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        new = tokens[0, inputs["input_ids"].shape[1]:].numpy()
        # 8 new tokens, or fewer ending at end-of-sequence (generate's only early stop)
        assert len(new) == 8 or (1 <= len(new) < 8 and new[-1] == ours.eos_id), (budget, new)
        assert np.all(new < config["vocab_size"]), (budget, new)
        assert tokenizer.decode(new) == ours.decode(new.tolist(), skip_special=False), (budget, new)
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[0] > sizes[1] > sizes[2]  # three different nested models, not one exported thrice

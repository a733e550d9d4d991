"""A Hugging Face tokenizer.json end to end, as docs/nemotron.md walks through it: import a parent that comes with
its own (byte-level BPE) tokenizer, elastify it on JSONL records tokenised with that tokenizer, export a budget,
and load the export with transformers' AutoTokenizer and NemotronHForCausalLM.

The tokenizer is trained in the test with the `tokenizers` package (tests/data/conftest.py; no downloads); the
parent is a random tiny NemotronH written as a Hugging Face directory. Two joint steps with router masks, then
the per-budget table.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.cli import main
from elastic_jax.data import HFTokenizer
from elastic_jax.experiment import load_experiment
from elastic_jax.model_io import model_config_of, read_metadata
from elastic_jax.train.elastify import run_elastify
from elastic_jax.train.metrics import read_metrics
from tests.data.conftest import CORPUS, build_bpe

VOCAB = 512  # the model's rows; the tokenizer (the data tests' tiny byte-level BPE with the reasoning specials) has 400
RUN = ["elastic.router.budgets=(1.0, 0.5)", "elastic.stage2_weights=None", "elastic.ce_weight=1.0",
       "elastic.stage1_steps=2", "elastic.stage2_steps=0", "elastic.static_after=1.0", "elastic.stage1_seq_len=32",
       "elastic.permute=False", "train.global_batch=2", "train.warmup_steps=1", "train.eval_prompts=0",
       "train.eval_batches=1", "train.log_every=1", "train.progress_bar=False", "checkpoint.every_steps=0"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_tokenizer")
    tokenizer = HFTokenizer.from_file(build_bpe(root / "tokenizer.json"))
    assert tokenizer.vocab_size < VOCAB
    # the parent as a Hugging Face directory that carries its tokenizer
    cfg = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=32", f"model.vocab_size={VOCAB}",
                                  f"model.pad_token_id={tokenizer.pad_id}", f"model.bos_token_id={tokenizer.bos_id}",
                                  f"model.eos_token_id={tokenizer.eos_id}"])
    ej.to_hf(cfg, ej.init_params(cfg, 0), root / "hf_parent", tokenizer=tokenizer)
    assert main(["import-hf", "--hf", str(root / "hf_parent"), "--out", str(root / "imported")]) == 0
    # your own data: JSONL text records
    records = root / "data.jsonl"
    records.write_text("".join(json.dumps({"text": t * 4}) + "\n" for t in CORPUS * 16))
    config = load_experiment("tiny_elastic", RUN)
    parent = root / "imported"
    config.model = ml_collections.ConfigDict(model_config_of(parent, read_metadata(parent)).to_dict())
    config.data.update(dict(tokenizer=str(root / "hf_parent"), reasoning_weight=0.0, text_weight=0.0,
                            record_weight=1.0, record_paths=(str(records),), record_eval_fraction=0.25))
    result = run_elastify(config, str(root / "elastic"), str(parent))
    out = root / "export"
    assert main(["export-hf", "--checkpoint", str(root / "elastic" / "checkpoints"), "--budget", "0.5", "--dtype",
                 "float32", "--out", str(out)]) == 0
    return {"root": root, "tokenizer": tokenizer, "result": result, "export": out}


def _without_source(tokenizer: dict) -> dict:
    """A stored tokenizer, less the path it was read from (the same tokenizer.json, copied)."""
    return {k: v for k, v in tokenizer.items() if k != "source"}


def test_the_parents_tokenizer_is_imported_trained_with_and_stored(flow):
    tokenizer, root = _without_source(flow["tokenizer"].to_dict()), flow["root"]
    assert tokenizer["kind"] == "hf"
    assert _without_source(read_metadata(root / "imported")["tokenizer"]) == tokenizer
    assert _without_source(read_metadata(root / "elastic" / "checkpoints")["tokenizer"]) == tokenizer
    losses = [r["train/loss"] for r in read_metrics(root / "elastic") if "train/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert [b["budget"] for b in flow["result"]["budgets"]] == [1.0, 0.5]
    assert all(np.isfinite(b["loss"]) for b in flow["result"]["budgets"])


def test_the_export_carries_the_tokenizer_and_runs_in_transformers(flow):
    import torch
    from transformers import AutoTokenizer, NemotronHForCausalLM

    out, tokenizer = flow["export"], flow["tokenizer"]
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads(
        (flow["root"] / "tokenizer.json").read_text())
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    text = "def add(a, b): return a"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids and max(ids) >= 256  # merges, not bytes
    assert hf_tokenizer.eos_token_id == tokenizer.eos_id and hf_tokenizer.bos_token_id == tokenizer.bos_id
    cfg, params = ej.from_hf(out)
    model = NemotronHForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    x = np.array([[tokenizer.bos_id, *ids]])
    with torch.no_grad():
        theirs = model(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    assert np.abs(np.asarray(ej.apply(cfg, params, x)) - theirs).max() < 1e-4

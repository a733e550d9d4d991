"""GGUF export: llama.cpp's NemotronH layout, the byte tokenizer as a vocabulary llama.cpp loads, refusals, and
(where llama-cpp-python is installed) the same greedy tokens from llama.cpp as from elastic_jax for a budget.

The budget is a nested model cut from a parent by `slice_params`, what `export-gguf --budget` exports from an
elastic checkpoint (its router's choice of spec is covered by the inference tests)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.cli import main
from elastic_jax.convert.gguf import GGUFExportError, to_gguf
from elastic_jax.data.tokenizer import ByteTokenizer
from elastic_jax.deploy import export_gguf
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model_io import save_model

gguf = pytest.importorskip("gguf")  # in the `peers` and `gguf` extras
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")

# M * E only (llama.cpp cannot mix '-' and 'E'); the exported budget keeps 3/4 of every width (hidden 64 -> 48)
PATTERN = "M*EM"
SPEC = dict(hidden_size=48, mamba_num_heads=2, num_attention_heads=2, n_routed_experts=4, moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=48)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config, params, path) of a budget sliced from a parent and exported f32 through the CLI."""
    root = tmp_path_factory.mktemp("gguf")
    cfg = ej.load_config("tiny", [f"model.pattern='{PATTERN}'"])
    params, sub_cfg = slice_params(ej.init_params(cfg, 0), cfg, ElasticSpec(**SPEC))
    save_model(root / "budget", sub_cfg, params, {"tokenizer": ByteTokenizer().to_dict()})
    out = root / "budget.gguf"
    assert main(["export-gguf", "--checkpoint", str(root / "budget"), "--dtype", "f32", "--out", str(out)]) == 0
    return sub_cfg, params, out


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_layout_follows_llama_cpp_converter(exported):
    cfg, params, path = exported
    reader = gguf.GGUFReader(str(path))
    kv = _fields(reader)
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert kv["general.architecture"] == "nemotron_h_moe"
    a = "nemotron_h_moe."
    assert kv[a + "block_count"] == 4
    assert kv[a + "attention.head_count_kv"] == [0, cfg.uniform("num_key_value_heads"), 0, 0]
    assert kv[a + "feed_forward_length"] == [0, 0, cfg.uniform("moe_intermediate_size"), 0]
    assert kv[a + "expert_count"] == cfg.uniform("n_routed_experts")
    assert kv[a + "expert_used_count"] == cfg.num_experts_per_tok
    assert kv[a + "ssm.inner_size"] == cfg.uniform("mamba_num_heads") * cfg.mamba_head_dim
    assert kv[a + "ssm.time_step_rank"] == cfg.uniform("mamba_num_heads")
    assert kv[a + "ssm.group_count"] == cfg.mamba_n_groups
    # A_log -> A = -exp(A_log) as a column; D a column; norm per group; conv squeezed; experts stacked
    a_log = np.asarray(params["layers_0"]["mixer"]["A_log"], np.float32)
    np.testing.assert_array_equal(tensors["blk.0.ssm_a"], -np.exp(a_log).reshape(-1, 1))
    assert tensors["blk.0.ssm_norm.weight"].shape[0] == cfg.mamba_n_groups
    assert tensors["blk.0.ssm_conv1d.weight"].ndim == 2
    e, f = cfg.uniform("n_routed_experts"), cfg.uniform("moe_intermediate_size")
    assert tensors["blk.2.ffn_up_exps.weight"].shape == (e, f, cfg.hidden_size)
    assert tensors["blk.2.ffn_down_exps.weight"].shape == (e, cfg.hidden_size, f)
    assert "blk.2.exp_probs_b.bias" in tensors and "blk.2.ffn_up_shexp.weight" in tensors
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"],
            kv["tokenizer.ggml.padding_token_id"]) == (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id)
    assert len(kv["tokenizer.ggml.tokens"]) == cfg.vocab_size


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_dtypes(exported, tmp_path, dtype):
    cfg, params, _ = exported
    out = to_gguf(cfg, params, ByteTokenizer(), tmp_path / "m.gguf", dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ssm_a"] == "F32" and types["blk.0.ssm_conv1d.weight"] == "F32"
    assert types["blk.2.ffn_gate_inp.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.2.ffn_down_exps.weight"] == ("F16" if dtype == "f16" else "Q8_0")  # rows of 32
    assert types["token_embd.weight"] == "F16"  # rows of 48 are no whole q8_0 blocks: f16, as the converter does


def test_mixed_dense_and_moe_refused_before_writing(tmp_path):
    cfg = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=32"])
    save_model(tmp_path / "ck", cfg, ej.init_params(cfg, 0))
    with pytest.raises(GGUFExportError, match="mixes dense MLP"):
        export_gguf(str(tmp_path / "ck"), str(tmp_path / "m.gguf"))
    assert list(tmp_path.iterdir()) == [tmp_path / "ck"]
    assert main(["export-gguf", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "m.gguf")]) != 0
    with pytest.raises(GGUFExportError, match="allowed: f32, f16, q8_0"):
        export_gguf(str(tmp_path / "ck"), str(tmp_path / "m.gguf"), "bf16")


def test_existing_output_refused(exported, tmp_path):
    cfg, params, _ = exported
    (tmp_path / "m.gguf").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        to_gguf(cfg, params, ByteTokenizer(), tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_text() == "x"


@needs_llama_cpp
def test_llama_cpp_vocab_round_trips(exported):
    from llama_cpp import Llama

    _, _, path = exported
    llm = Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False)
    tok = ByteTokenizer()
    for text in ["hello world", "  two  spaces\nnewline\t", "(3+4)*2=<think>7*2</think>14", "héllo ✓ 日本"]:
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        assert ids == tok.encode(text, add_bos=True), text
        assert llm.detokenize(tok.encode(text), special=True).decode() == text


@needs_llama_cpp
def test_llama_cpp_greedy_tokens_match(exported):
    """Bar: an exported f32 budget gives llama.cpp the same 32 greedy tokens as elastic_jax."""
    from llama_cpp import Llama

    cfg, params, path = exported
    prompt = ByteTokenizer().encode("(3+4)*2=", add_bos=True)
    # eos_id=-1: no stop token, all 32 tokens (llama.cpp's generate does not stop either)
    ours = ej.generate(cfg, params, [prompt], 32, temperature=0.0, eos_id=-1)[0, len(prompt):].tolist()
    assert len(ours) == 32
    llm = Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        theirs.append(int(token))
        if len(theirs) == 32:
            break
    # the prompt's last-position logits agree closely too (a clearer failure than a token mismatch)
    logits = np.asarray(ej.apply(cfg, params, np.asarray([prompt]))[0, -1], np.float32)
    np.testing.assert_allclose(np.asarray(llm.scores[len(prompt) - 1], np.float32), logits, rtol=1e-3, atol=1e-4)
    assert theirs == ours


def test_hf_tokenizer_passes_through(exported, tmp_path):
    """A byte-level BPE tokenizer.json becomes llama.cpp's gpt2 vocabulary: same ids, merges and specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from elastic_jax.data.tokenizer import HFTokenizer

    cfg, params, _ = exported
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["hello world, hello there"] * 20, trainer)
    tok = HFTokenizer(bpe.to_str())
    out = to_gguf(cfg, params, tok, tmp_path / "m.gguf")
    kv = _fields(gguf.GGUFReader(str(out)))
    vocab = bpe.get_vocab()
    assert all(kv["tokenizer.ggml.tokens"][i] == t for t, i in vocab.items())
    assert len(kv["tokenizer.ggml.merges"]) == len(bpe.get_vocab()) - 259
    assert kv["tokenizer.ggml.bos_token_id"] == vocab["<s>"] and kv["tokenizer.ggml.eos_token_id"] == vocab["</s>"]
    if HAS_LLAMA_CPP:
        from llama_cpp import Llama

        llm = Llama(model_path=str(out), n_ctx=64, n_threads=2, verbose=False)
        text = "hello world, hello there"
        assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text)
        assert llm.detokenize(tok.encode(text)).decode() == text

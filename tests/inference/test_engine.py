"""The engine against transformers: every trained budget and one in between, a batch of prompts of different
lengths, each prompt's greedy tokens equal to transformers' generate on that prompt alone on the budget's export;
bad requests fail with one clear error before anything compiles."""

from __future__ import annotations

import gc

import jax
import pytest
import torch
from transformers import NemotronHForCausalLM

import elastic_jax as ej
from elastic_jax.data import ByteTokenizer
from elastic_jax.elastic.accounting import cache_bytes, weight_bytes
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.programs import VIEWS_MIN_TOKENS
from elastic_jax.model.functional import InputError
from elastic_jax.model.moe import choose_strategy

TOKENIZER = ByteTokenizer()
# lengths 5, 14 and 38: different feed pieces (1, 4 and 16 tokens), the longest past the scan's chunk of 32
PROMPTS = [TOKENIZER.encode(text, add_bos=True) for text in ("7*3=", "((4+5)*2)-3=<think>", "x" * 37)]


def _hf_greedy(path, prompt: list[int], max_new: int, cfg) -> list[int]:
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)[0, len(prompt):].tolist()
    if cfg.eos_token_id in out:  # transformers pads a finished sequence; ours ends at its eos
        out = out[:out.index(cfg.eos_token_id) + 1]
    return out


@pytest.mark.parametrize("budget", [1.0, 0.7, 0.4, 0.55])
def test_batched_greedy_equals_transformers_alone(engine, budget, tmp_path):
    assert len({len(p) for p in PROMPTS}) == 3
    arch = engine.arch(budget)
    assert arch.trained == (budget != 0.55)
    outs = engine.generate(PROMPTS, budget, max_new_tokens=32)
    sub_params, sub_cfg = slice_params(jax.device_get(engine.params), engine.cfg, arch.spec)
    ej.to_hf(sub_cfg, sub_params, tmp_path)
    for prompt, ours in zip(PROMPTS, outs):
        assert ours == _hf_greedy(tmp_path, prompt, 32, sub_cfg)


def test_programs_are_cached_per_architecture(engine):
    engine.generate(PROMPTS, 0.7, max_new_tokens=32)
    before = engine.compilations
    engine.generate(PROMPTS[::-1], 0.7, max_new_tokens=32)  # same lengths in another order: same programs
    assert engine.compilations == before


def test_sampling_is_seeded_and_rows_stop_on_their_own(engine):
    a = engine.generate(PROMPTS, 0.4, max_new_tokens=16, temperature=1.0, seed=3)
    b = engine.generate(PROMPTS, 0.4, max_new_tokens=16, temperature=1.0, seed=3)
    assert a == b
    # stop ids end each row separately; a finished row emits nothing more
    batch = engine.start(0.4, PROMPTS, 128)
    first = engine.decode(batch, 8, stop_ids=(), temperature=0.0)
    stop = first[1][2]
    batch = engine.start(0.4, PROMPTS, 128)
    stopped = engine.decode(batch, 8, stop_ids=(stop,))
    assert stopped[1] == first[1][:first[1].index(stop) + 1]
    for row, toks in enumerate(stopped):
        assert toks == first[row][:len(toks)] and (len(toks) == 8 or toks[-1] == stop)


def test_decoding_in_pieces_continues_exactly(engine):
    whole = engine.generate(PROMPTS, 1.0, max_new_tokens=12, eos_id=-1)
    streamed = list(engine.stream(PROMPTS[1], 1.0, max_new_tokens=12, chunk=5))
    assert streamed == whole[1][:len(streamed)]
    # feeding the generated text back in reproduces the state: the next token matches a fresh prefill
    batch = engine.start(1.0, [p[:3] for p in PROMPTS], 128)
    engine.feed(batch, [p[3:] for p in PROMPTS])
    assert engine.decode(batch, 4, stop_ids=()) == [w[:4] for w in engine.generate(PROMPTS, 1.0, 4, eos_id=-1)]


@pytest.mark.parametrize("budget", [1.0, 0.4])
def test_each_decode_program_gives_a_row_the_same_tokens(engine, budget):
    """Batch 1 runs without vmap on the CPU decode kernels (kernels/cpu_gemv); a batch whose rows cover the experts
    computes every expert once (dense), other batches gather each row's experts under vmap: one row's tokens are the
    same in each."""
    prompts = PROMPTS + [PROMPTS[0][:3]]  # 4 rows x top-k 2 >= 8 experts: the dense program
    cfg = engine.cfg
    assert choose_strategy(len(prompts), cfg.num_experts_per_tok, cfg.n_routed_experts) == "dense"
    assert choose_strategy(1, cfg.num_experts_per_tok, cfg.n_routed_experts) == "gathered"
    new = max(VIEWS_MIN_TOKENS, 16)
    batched = engine.generate(prompts, budget, max_new_tokens=new, eos_id=-1)
    for prompt, row in zip(prompts, batched):
        assert engine.generate([prompt], budget, max_new_tokens=new, eos_id=-1)[0] == row  # views
    streamed = list(engine.stream(prompts[1], budget, max_new_tokens=new, chunk=4))  # gathered experts
    assert streamed == batched[1][:len(streamed)] and len(streamed) >= 4


def _live_bytes() -> int:
    gc.collect()
    return sum(int(x.nbytes) for x in jax.live_arrays())


def test_memory_report_holds_the_parent_once(engine):
    for b in (1.0, 0.7, 0.4):
        engine.arch(b)
    report = engine.memory_report([1.0, 0.7, 0.4], context=256)
    assert report["parent_matches_accounting"] and report["parent_weight_bytes"] == weight_bytes(engine.cfg, "float32")
    assert report["resident_bytes"] == report["parent_weight_bytes"] + report["router_bytes"]
    for row in report["budgets"]:
        cfg = engine.arch(row["budget"]).cfg
        assert row["cache_matches_accounting"]
        assert row["kv_bytes_per_sequence"] + row["ssm_state_bytes_per_sequence"] == cache_bytes(cfg, 1, 256)


def test_serving_budgets_keeps_no_copy_of_their_weights(engine):
    """Each program cuts its budget's slices inside the jit: after serving three more budgets (batch 1 and a batch,
    so both decode programs ran), the arrays alive in the process have grown by less than the smallest slice."""
    engine.generate(PROMPTS[:1], 1.0, max_new_tokens=4)
    before = _live_bytes()
    for budget in (0.7, 0.55, 0.4):
        engine.generate(PROMPTS[:1], budget, max_new_tokens=4)
        engine.generate(PROMPTS, budget, max_new_tokens=4)
    grown = _live_bytes() - before
    assert grown < weight_bytes(engine.arch(0.4).cfg, "float32"), grown


def test_bad_requests_fail_before_compiling(engine, elastic_checkpoint, tmp_path):
    engine.arch(0.4)
    before = engine.compilations
    for budget in (0.0, -0.5, 1.5, 0.2, "0.5"):
        with pytest.raises(ElasticError, match="budget"):
            engine.generate(PROMPTS, budget, 8)
    with pytest.raises(ElasticError, match=r"outside what the router can reach.*\[0.4, 1.0\]"):
        engine.arch(0.3)
    limit = engine.cfg.max_position_embeddings
    with pytest.raises(InputError, match="exceeds the context limit"):
        engine.generate(PROMPTS, 1.0, limit - len(PROMPTS[2]) + 1)
    with pytest.raises(InputError, match="vocabulary"):
        engine.generate([[1, engine.cfg.vocab_size]], 1.0, 4)
    assert engine.compilations == before
    with pytest.raises(ElasticError, match="not an elastic checkpoint"):
        Engine.load(elastic_checkpoint.parent.parent / "parent")  # a plain model checkpoint
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="not an elastic_jax checkpoint"):
        Engine.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Engine.load(tmp_path / "notes.txt")

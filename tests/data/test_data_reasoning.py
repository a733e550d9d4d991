"""The synthetic reasoning task: determinism, disjoint splits, correct answers, loss masks, scoring."""

from __future__ import annotations

import re

import numpy as np
import pytest

from elastic_jax.data import (
    PRESETS,
    ByteTokenizer,
    ReasoningSource,
    ReasoningTaskConfig,
    encode_example,
    encode_prompt,
    eval_prompts,
    evaluate_prompt,
    make_example,
    score_answer,
    split_of,
)
from elastic_jax.data.reasoning import apply_op

STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
CONFIGS = [ReasoningTaskConfig()] + [ReasoningTaskConfig.preset(name, seed=3) for name in PRESETS]


def test_deterministic_by_seed():
    cfg = ReasoningTaskConfig(seed=7)
    first = [make_example(i, "train", cfg) for i in range(50)]
    assert first == [make_example(i, "train", ReasoningTaskConfig(seed=7)) for i in range(50)]
    other = [make_example(i, "train", ReasoningTaskConfig(seed=8)) for i in range(50)]
    assert [e.text for e in first] != [e.text for e in other]
    source = ReasoningSource(cfg, "train")
    assert source[17] == first[17] and len(source) > 10**9


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", *PRESETS])
def test_answers_and_traces_are_correct(cfg):
    for split in ("train", "eval"):
        for i in range(300):
            ex = make_example(i, split, cfg)
            assert ex.text == f"{ex.prompt}<think>{ex.trace}</think>{ex.answer}"
            assert cfg.min_steps <= ex.num_steps <= cfg.max_steps
            assert int(ex.answer) == evaluate_prompt(ex.prompt, cfg.modulus)
            steps = [STEP.match(s) for s in ex.trace.split(";")]
            assert all(steps) and len(steps) == ex.num_steps
            operands = [int(x) for x in re.findall(r"\d+", ex.prompt)]
            assert int(steps[0].group(1)) == operands[0]
            previous = None
            for k, step in enumerate(steps):
                left, op, right, result = int(step.group(1)), step.group(2), int(step.group(3)), int(step.group(4))
                assert op in cfg.ops and 0 <= right <= cfg.max_operand and right == operands[k + 1]
                assert previous is None or left == previous
                assert result == apply_op(left, op, right, cfg.modulus) < cfg.modulus
                previous = result
            assert int(ex.answer) == previous


def test_splits_are_disjoint():
    cfg = ReasoningTaskConfig()
    train = {make_example(i, "train", cfg).prompt for i in range(5000)}
    evals = {make_example(i, "eval", cfg).prompt for i in range(5000)}
    assert train.isdisjoint(evals)
    assert all(split_of(p, cfg) == "train" for p in train) and all(split_of(p, cfg) == "eval" for p in evals)
    # The split depends on the prompt only, so it holds across seeds too.
    other_eval = {make_example(i, "eval", ReasoningTaskConfig(seed=5)).prompt for i in range(500)}
    assert train.isdisjoint(other_eval)
    assert len(evals) > 100  # the eval split is not degenerate


def test_tiny_problem_space_is_a_clear_error():
    cfg = ReasoningTaskConfig(min_steps=1, max_steps=1, max_operand=1, ops="+", eval_fraction=0.01)
    prompts = [f"{a}+{b}=" for a in (0, 1) for b in (0, 1)]
    # the split is a fixed hash of the prompt: none of these four prompts falls in the 1% eval split
    assert all(split_of(p, cfg) == "train" for p in prompts)
    with pytest.raises(ValueError, match="too small"):
        make_example(0, "eval", cfg)


def test_loss_mask_covers_trace_answer_eos_only():
    tok = ByteTokenizer()
    for i in range(20):
        ex = make_example(i, "train", ReasoningTaskConfig.preset("medium"))
        tokens, mask = encode_example(ex, tok)
        assert tokens.dtype == np.int32 and mask.dtype == np.int32 and tokens.shape == mask.shape
        assert tok.decode(tokens) == f"<s>{ex.text}</s>"
        assert tok.decode(tokens[mask == 0]) == f"<s>{ex.prompt}<think>"
        assert tok.decode(tokens[mask == 1]) == f"{ex.trace}</think>{ex.answer}</s>"
        # The masked part is one contiguous suffix.
        first = int(np.argmax(mask))
        assert mask[:first].sum() == 0 and mask[first:].all()
        assert list(tokens[:first]) == encode_prompt(ex, tok)


def test_score_answer():
    tok = ByteTokenizer()
    ex = make_example(0, "train", ReasoningTaskConfig())
    wrong = str((int(ex.answer) + 1) % 100)
    assert score_answer(f"{ex.trace}</think>{ex.answer}</s>", ex)
    assert score_answer(f"<s>{ex.prompt}<think>{ex.trace}</think> {ex.answer}</s>garbage", ex)
    assert score_answer(f"</think>{ex.answer}", ex)
    assert not score_answer(f"</think>{wrong}</s>", ex)
    assert not score_answer(f"</think>{ex.answer}7</s>", ex)
    assert not score_answer(f"</think>{ex.answer} and more", ex)
    assert not score_answer(ex.answer, ex)  # no </think>
    tokens, _ = encode_example(ex, tok)
    assert score_answer(tokens, ex, tok)
    assert score_answer(list(tokens) + [ord("9") + 5, 0, 0], ex)  # anything after eos is ignored
    bad = tok.encode(f"</think>{wrong}", add_eos=True)
    assert not score_answer(np.array(bad), ex)
    assert not score_answer(tok.encode(ex.trace), ex)


def test_eval_prompts():
    cfg = ReasoningTaskConfig.preset("medium")
    prompts = eval_prompts(40, cfg)
    assert prompts == eval_prompts(40, cfg) and len(prompts) == 40
    assert all(split_of(e.prompt, cfg) == "eval" for e in prompts)


@pytest.mark.parametrize("kwargs,field", [
    (dict(min_steps=0), "min_steps"),
    (dict(min_steps=3, max_steps=2), "max_steps"),
    (dict(max_operand=0), "max_operand"),
    (dict(ops="+/"), "ops"),
    (dict(ops=""), "ops"),
    (dict(modulus=1), "modulus"),
    (dict(eval_fraction=1.0), "eval_fraction"),
    (dict(seed=-1), "seed"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"data\.reasoning\.{field}:"):
        ReasoningTaskConfig(**kwargs)


def test_config_dict_round_trip_and_presets():
    cfg = ReasoningTaskConfig.preset("hard", seed=4)
    assert ReasoningTaskConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        ReasoningTaskConfig.from_dict({"steps": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        ReasoningTaskConfig.preset("impossible")
    lengths = {name: np.mean([len(make_example(i, "train", ReasoningTaskConfig.preset(name)).text)
                              for i in range(200)]) for name in PRESETS}
    assert lengths["easy"] < lengths["medium"] < lengths["hard"]

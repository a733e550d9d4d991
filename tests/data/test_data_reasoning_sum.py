"""The chain_sum task: the trace shows every step, the answer is the sum of the step results (never shown)."""

from __future__ import annotations

import re

import pytest

from elastic_jax.data.reasoning import (
    ANSWER_PRESETS,
    PRESETS,
    ReasoningTaskConfig,
    apply_op,
    make_example,
)


def test_answer_is_the_sum_of_the_trace_results():
    cfg = ReasoningTaskConfig.preset("chain_sum", seed=5)
    for i in range(200):
        ex = make_example(i, "eval" if i % 3 == 0 else "train", cfg)
        steps = re.findall(r"(\d+)([+-])(\d+)=(\d+)", ex.trace)
        assert len(steps) == ex.num_steps and cfg.min_steps <= ex.num_steps <= cfg.max_steps
        for left, op, right, result in steps:  # the trace does the work: every step is right
            assert apply_op(int(left), op, int(right), cfg.modulus) == int(result)
        assert int(ex.answer) == sum(int(result) for *_, result in steps)
        assert ex.text == f"{ex.prompt}<think>{ex.trace}</think>{ex.answer}"
    assert make_example(7, "train", cfg) == make_example(7, "train", ReasoningTaskConfig.preset("chain_sum", seed=5))


def test_sum_answers_differ_from_last_answers():
    # the same problems with answer="last" give the last result: only the answer changes, not the trace
    summed = ReasoningTaskConfig.preset("chain_sum")
    last = ReasoningTaskConfig(**{**ANSWER_PRESETS["chain_sum"], "answer": "last"})
    pairs = [(make_example(i, "train", summed), make_example(i, "train", last)) for i in range(100)]
    assert all(s.trace == t.trace and t.answer == t.trace.rsplit("=", 1)[1] for s, t in pairs)
    assert sum(s.answer != t.answer for s, t in pairs) > 80


def test_existing_presets_answer_with_the_last_result():
    assert all("answer" not in p for p in PRESETS.values())
    assert ReasoningTaskConfig.preset("chain").answer == "last"


def test_bad_answer_mode_names_the_field():
    with pytest.raises(ValueError, match=r"data\.reasoning\.answer: must be one of \('last', 'sum'\), got 'max'"):
        ReasoningTaskConfig(answer="max")
    with pytest.raises(ValueError, match="chain_sum"):
        ReasoningTaskConfig.preset("chain_product")


def test_flat_prompt_reads_left_to_right_and_the_trace_implies_its_answer():
    from elastic_jax.data.reasoning import answer_of_trace, evaluate_prompt

    cfg = ReasoningTaskConfig.preset("chain_sum")
    for i in range(50):
        ex = make_example(i, "train", cfg)
        assert "(" not in ex.prompt and int(ex.trace.rsplit("=", 1)[1]) == evaluate_prompt(ex.prompt, cfg.modulus)
        assert answer_of_trace(ex.trace, cfg) == ex.answer
    assert answer_of_trace("1+2=3;3+9=2", cfg) == "5" and answer_of_trace("1+2=", cfg) is None
    assert answer_of_trace("1+2=3;3+9=2", ReasoningTaskConfig.preset("chain")) == "2"
    with pytest.raises(ValueError, match=r"data\.reasoning\.flat: must be True or False"):
        ReasoningTaskConfig(flat=1)

"""Standard and elastic budget control on the tiny elastic checkpoint: each phase equals a fresh generation of the
text so far, forced `</think>` at the cap, and the thinking cap's errors."""

from __future__ import annotations

import pytest

from elastic_jax.data import ByteTokenizer
from elastic_jax.inference.budget_control import run_budget_control
from elastic_jax.model.functional import InputError

TOKENIZER = ByteTokenizer()
PROMPTS = [TOKENIZER.encode(text, add_bos=True) for text in ("3+4=<think>", "((7+5)*3)-4=<think>", "9*9=<think>")]


@pytest.mark.parametrize("think, answer", [(0.4, 0.4), (0.4, 1.0), (1.0, 0.7)])
def test_phases_equal_fresh_generations(engine, think, answer):
    result = run_budget_control(engine, PROMPTS, think, answer, max_think=6, max_answer=5)
    end_think, eos = TOKENIZER.end_think_id, TOKENIZER.eos_id
    alone = engine.generate(PROMPTS, think, 6)  # generate stops at eos only: cut at the first </think>
    for row, prompt in enumerate(PROMPTS):
        thoughts = result.thoughts[row]
        expected = alone[row][:alone[row].index(end_think) + 1] if end_think in alone[row] else alone[row]
        assert thoughts == expected
        assert result.forced[row] == (len(thoughts) == 6 and thoughts[-1] not in (end_think, eos))
        text = prompt + result.generated(row)[:len(thoughts) + int(result.forced[row])]
        if thoughts and thoughts[-1] == eos:
            assert result.answers[row] == []
        else:
            assert result.answers[row] == engine.generate([text], answer, 5)[0]
        assert result.tokens_generated[row] == len(result.generated(row))


def test_thinking_cap_errors_before_compiling(engine):
    engine.arch(0.4)
    before = engine.compilations
    for cap in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="thinking cap"):
            run_budget_control(engine, PROMPTS, 0.4, 1.0, max_think=cap)
    with pytest.raises(InputError, match="context limit"):
        run_budget_control(engine, PROMPTS, 0.4, 1.0, max_think=engine.cfg.max_position_embeddings)
    assert engine.compilations == before

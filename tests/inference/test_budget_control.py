"""Standard and elastic budget control on the tiny elastic checkpoint: each phase equals a fresh generation of the
text so far, forced `</think>` at the cap, and the thinking cap's errors."""

from __future__ import annotations

import os

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


def _row(label, kind, latency, accuracy):
    return {"label": label, "kind": kind, "latency_s": latency, "accuracy": accuracy}


def test_headline_ignores_standard_settings_that_answer_nothing():
    from elastic_jax.inference.evaluate import headline
    from elastic_jax.inference.report import headline_sentences

    # a cap too short to think: every budget 0; the only working standard setting is faster than every elastic one
    rows = [_row("s cap 1", "standard", 1.0, 0.0), _row("s cap 32", "standard", 2.0, 0.9),
            _row("e cap 1", "elastic", 0.5, 0.0), _row("e cap 32", "elastic", 4.0, 0.9)]
    head = headline(rows)
    assert head["latency_ratio"]["value"] == 0.5 and head["latency_ratio"]["standard"] == "s cap 32"
    assert head["accuracy_gain"]["value"] == 0.0 and head["accuracy_gain"]["elastic"] == "e cap 1"
    ratio = headline_sentences(head)[1]
    assert "x lower latency" not in ratio and "2.00x higher latency" in ratio


def test_headline_states_a_loss_as_a_loss():
    from elastic_jax.inference.evaluate import headline
    from elastic_jax.inference.report import headline_sentences

    rows = [_row("s", "standard", 2.0, 0.8), _row("e fast", "elastic", 1.0, 0.5)]
    head = headline(rows)
    assert head["accuracy_gain"]["value"] == pytest.approx(-0.3) and head["latency_ratio"] is None
    first, second = headline_sentences(head)
    assert "-30.0 points" in first and "negative" in first and "no latency ratio" in second


def test_timed_passes_must_be_positive(engine):
    from elastic_jax.inference.evaluate import Setting, evaluate_settings, held_out_problems

    for repeats in (0, 1.5, True):
        with pytest.raises(InputError, match="repeats"):
            evaluate_settings(engine, [Setting(1.0, 1.0, 2)], held_out_problems(engine, 2), repeats=repeats)


def test_same_thoughts_every_budget_reads_the_same_text(engine):
    from elastic_jax.inference.budget_control import same_thoughts

    results = same_thoughts(engine, PROMPTS, 1.0, [1.0, 0.4], max_think=6, max_answer=4)
    full, small = results[1.0], results[0.4]
    assert full.thoughts == small.thoughts and full.forced == small.forced
    assert full.thoughts == run_budget_control(engine, PROMPTS, 1.0, 1.0, 6, 4).thoughts
    for row, prompt in enumerate(PROMPTS):
        read = prompt + small.generated(row)[:len(small.thoughts[row]) + int(small.forced[row])]
        if not (small.thoughts[row] and small.thoughts[row][-1] == TOKENIZER.eos_id):
            assert small.answers[row] == engine.generate([read], 0.4, 4)[0]


def test_busy_machine_is_refused_with_the_load_and_threshold():
    from elastic_jax.inference.idle import BusyMachineError, LoadMonitor, check_max_load, require_idle

    with pytest.raises(BusyMachineError, match=r"other processes used 1\.50 cores .* threshold 1; "):
        require_idle(1.5, 1.0, "before timing")
    require_idle(0.2, 1.0, "before timing")  # idle enough: no error
    monitor = LoadMonitor(max_load=1.0)
    with pytest.raises(BusyMachineError, match="while timing 1 cap 8"):
        monitor.timed(2.0, "1 cap 8")
    lenient = LoadMonitor(max_load=1.0, allow_busy=True)
    lenient.timed(0.5, "a")
    lenient.timed(2.0, "b")
    record = lenient.record()
    assert record["timing_result"] is False and record["other_load_during_max"] == 2.0 and record["allow_busy"]
    for bad in (0, -1.0, "1", True):
        with pytest.raises(InputError, match="max_load"):
            check_max_load(bad)


def test_load_window_leaves_out_this_process():
    from elastic_jax.inference.idle import LoadWindow

    window = LoadWindow().start()
    total = sum(i * i for i in range(3_000_000))  # this process's own work is not "other processes"
    assert total > 0
    assert 0.0 <= window.stop() <= os.cpu_count() + 0.5


def test_report_records_load_and_same_thoughts(engine):
    from elastic_jax.inference.idle import LoadMonitor
    from elastic_jax.inference.report import build_report, markdown

    report = build_report(engine, budgets=[1.0, 0.4], caps=[3], problems=2, batch_size=2, max_answer=2, repeats=1,
                          monitor=LoadMonitor(max_load=1.0, allow_busy=True))
    assert report["load"]["allow_busy"] and report["load"]["other_load_before"] is not None
    assert all("other_load" in r for r in report["settings"]) and len(report["settings"]) == 4
    same = report["same_thoughts"]
    assert same["think_budget"] == 1.0 and [r["answer_budget"] for r in same["answers"]] == [1.0, 0.4]
    table = markdown(report)
    assert "Answering from the same thoughts" in table
    said = "not a timing result" if not report["load"]["timing_result"] else "measured on an idle machine"
    assert said in table


def test_docs_section_is_rendered_from_its_json():
    import json

    from elastic_jax.inference.report_docs import DOCS, JSON_NAME, current_section, render_section

    report = json.loads((DOCS / JSON_NAME).read_text())
    assert current_section((DOCS / "results.md").read_text()) == render_section(report)
    assert {r["answer_budget"] for r in report["same_thoughts"]["answers"]} == {r["budget"] for r in report["router"]}
    if not report["load"]["timing_result"]:
        assert "not a timing result" in current_section((DOCS / "results.md").read_text())

"""The inference verbs on the tiny elastic checkpoint: generate / export-hf with and without --budget, eval,
budget-control and report (table, plot, headline, router choices)."""

from __future__ import annotations

import json

import pytest

from elastic_jax.cli import main
from elastic_jax.data import ByteTokenizer
from elastic_jax.inference.evaluate import pareto_front

TOKENIZER = ByteTokenizer()


def test_generate_streams_a_budget(engine, elastic_checkpoint, capsys):
    ckpt = str(elastic_checkpoint)
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "3+4=", "--max-new-tokens", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "elastic checkpoint" in err and "--budget" in err and len(err.splitlines()) == 1
    assert main(["generate", "--checkpoint", ckpt, "--budget", "0.4", "--prompt", "3+4=", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    expected = engine.generate([TOKENIZER.encode("3+4=", add_bos=True)], 0.4, 6)[0]
    assert out == TOKENIZER.decode(expected, skip_special=False) + "\n"
    assert main(["generate", "--checkpoint", ckpt, "--budget", "0.1", "--prompt", "3+4="]) == 2
    assert "router can reach" in capsys.readouterr().err


def test_generate_with_a_draft_budget_prints_the_plain_text(engine, elastic_checkpoint, capsys):
    args = ["generate", "--checkpoint", str(elastic_checkpoint), "--prompt", "3+4=", "--max-new-tokens", "6"]
    assert main([*args, "--draft-budget", "0.4"]) == 2
    assert "needs --budget" in capsys.readouterr().err
    assert main([*args, "--budget", "1.0", "--draft-budget", "0.4", "--draft-tokens", "2"]) == 0
    captured = capsys.readouterr()
    expected = engine.generate([TOKENIZER.encode("3+4=", add_bos=True)], 1.0, 6)[0]
    assert captured.out == TOKENIZER.decode(expected, skip_special=False) + "\n"
    assert "drafted tokens accepted" in captured.err


def test_export_hf_needs_a_budget(elastic_checkpoint, tmp_path, capsys):
    ckpt = str(elastic_checkpoint)
    assert main(["export-hf", "--checkpoint", ckpt, "--out", str(tmp_path / "a")]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["export-hf", "--checkpoint", ckpt, "--budget", "0.7", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "config.json").exists()


def test_budget_control_and_eval(elastic_checkpoint, capsys):
    ckpt = str(elastic_checkpoint)
    assert main(["budget-control", "--checkpoint", ckpt, "--think-budget", "0.4", "--answer-budget", "1.0",
                 "--max-think", "0", "--prompt", "3+4="]) == 2
    assert "thinking cap" in capsys.readouterr().err
    assert main(["budget-control", "--checkpoint", ckpt, "--think-budget", "0.4", "--answer-budget", "1.0",
                 "--max-think", "4", "--max-answer", "3", "--prompt", "3+4="]) == 0
    out = capsys.readouterr().out
    assert out.startswith("thinking (0.4, ") and "\nanswer (1): " in out
    assert main(["eval", "--checkpoint", ckpt, "--budgets", "1.0,0.4", "--problems", "3", "--batch-size", "3",
                 "--max-think", "3", "--max-answer", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "1" and lines[2].split()[0] == "0.4"


def test_report_writes_table_plot_and_headline(elastic_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--checkpoint", str(elastic_checkpoint), "--out", str(out), "--budgets", "1.0,0.4",
                 "--caps", "1,2,3", "--problems", "3", "--batch-size", "3", "--max-answer", "3",
                 "--allow-busy"]) == 0  # the suite's own workers keep the machine busy
    printed = capsys.readouterr().out
    assert "accuracy gain" in printed and "latency ratio" in printed
    report = json.loads((out / "results.json").read_text())
    settings = report["settings"]
    # every budget alone and both ordered pairs, at three caps each
    assert sorted({(s["think_budget"], s["answer_budget"]) for s in settings}) == [(0.4, 0.4), (0.4, 1.0),
                                                                                 (1.0, 0.4), (1.0, 1.0)]
    assert len(settings) == 12 and all(s["compiled_while_timed"] == 0 for s in settings)
    assert [s["pareto"] for s in settings] == pareto_front(settings) and any(s["pareto"] for s in settings)
    assert [r["budget"] for r in report["router"]] == [1.0, 0.4] and report["router"][0]["hidden"] == 1.0
    assert (out / "accuracy_latency.png").stat().st_size > 1000
    assert "| setting |" in (out / "results.md").read_text()


def test_pareto_front_and_headline():
    from elastic_jax.inference.evaluate import headline

    rows = [{"label": "s1", "kind": "standard", "latency_s": 2.0, "accuracy": 0.5},
            {"label": "s2", "kind": "standard", "latency_s": 1.0, "accuracy": 0.3},
            {"label": "e1", "kind": "elastic", "latency_s": 1.0, "accuracy": 0.6},
            {"label": "e2", "kind": "elastic", "latency_s": 3.0, "accuracy": 0.55}]
    assert pareto_front(rows) == [False, False, True, False]
    head = headline(rows)
    assert head["accuracy_gain"]["value"] == pytest.approx(0.3) and head["accuracy_gain"]["elastic"] == "e1"
    assert head["latency_ratio"]["value"] == 2.0 and head["latency_ratio"]["standard"] == "s1"

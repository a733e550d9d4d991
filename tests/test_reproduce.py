"""benchmarks/reproduce.py: the smoke scale end to end in this process (every kind of row trained and scored, the
report written, a rerun resuming only the unfinished row), the tokens-to-match and setting choice on known curves,
and docs/results.md / docs/training.md rendered from docs/reproduce_results.json exactly as committed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import reproduce  # noqa: E402
from reproduce_choice import choose  # noqa: E402
from reproduce_plan import BUDGETS, CURVE, REFERENCE, plan  # noqa: E402
from reproduce_render import RESULTS, render  # noqa: E402
from reproduce_report import tokens_to_match  # noqa: E402


def _executions(workdir: Path) -> list[str]:
    return [line.split()[1] for line in (workdir / "executions.log").read_text().splitlines()]


def _check_results(workdir: Path, scale) -> dict:
    summary = json.loads((workdir / "results.json").read_text())
    rows = plan(scale)
    assert summary["missing"] == [] and sorted(summary["rows"]) == sorted(r.name for r in rows)
    for row in rows:
        result = summary["rows"][row.name]
        for entry in result["budgets"].values():
            assert math.isfinite(entry["loss"]) and 0 <= entry["accuracy"] <= 1 and entry["total_params"] > 0
        if row.kind == "elastify":
            sizes = [result["budgets"][f"{b:g}"]["total_params"] for b in BUDGETS]
            assert sizes == sorted(sizes, reverse=True), (row.name, sizes)
    best = summary["choice"]["best"]
    assert best in scale.settings and REFERENCE in summary["choice"]["eligible"]
    # Minitron-style students and twins have exactly the shapes of the curve's elastic run at E
    source = summary["rows"][f"elastic_{CURVE}_x1_s0"]["budgets"]
    for name in ("twin_0.4_s0", "twin_0.7_s0", "minitron_0.7_x1_s0", "minitron_0.4_x1_s0"):
        budget, entry = next(iter(summary["rows"][name]["budgets"].items()))
        assert entry["total_params"] == source[budget]["total_params"], name
    # the curve's Minitron pair at point p spends p x E, as the elastic run does
    assert summary["rows"]["minitron_0.4_x1_s0"]["tokens"] * 2 == summary["E"]
    assert [e["tokens"] for e in summary["curves"]["elastic"]["0.4"]] == [round(p * summary["E"])
                                                                          for p in scale.points]
    assert sorted(summary["headline"]) == ["0.4", "0.7"]
    assert sorted(summary["parent_check"]["budgets"]) == ["0.4", "0.7"]
    return summary


def test_smoke_scale_end_to_end_in_one_process_then_resumes_only_the_unfinished_row(tmp_path: Path):
    """Every kind of row (parent, elastic settings, the curve, Minitron-style, twins) trains and is scored, the
    report and plots are written; a rerun after one row's DONE marker is removed executes that row alone and
    resumes its finished checkpoint (no step trained again)."""
    args = ["--workdir", str(tmp_path), "--scale", "smoke", "--inline"]
    assert reproduce.main(args) == 0
    _check_results(tmp_path, reproduce.SMOKE)
    assert "### Tokens to match Minitron-style at E" in (tmp_path / "results.md").read_text()
    for name in ("loss_vs_tokens.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = _executions(tmp_path)
    assert sorted(before) == sorted(r.name for r in plan(reproduce.SMOKE))  # each row ran once
    (tmp_path / "rows" / "twin_0.4_s0" / "DONE").unlink()
    assert reproduce.main(args) == 0
    assert _executions(tmp_path)[len(before):] == ["twin_0.4_s0"]
    result = json.loads((tmp_path / "rows" / "twin_0.4_s0" / "result.json").read_text())
    assert result["train"]["resumed_from"] == result["steps"] and result["train"]["steps_run"] == 0


@pytest.mark.slow
def test_default_scale_end_to_end(tmp_path: Path):
    """The documented scale (about an hour on 2 quiet cores): every row finishes and the report is complete."""
    assert reproduce.main(["--workdir", str(tmp_path), "--inline"]) == 0
    summary = _check_results(tmp_path, reproduce.DEFAULT)
    assert summary["problems"] >= 256 and len(summary["seeds"]) == 3


def test_tokens_to_match_interpolates_in_log_tokens_and_says_when_it_never_matches():
    curve = [(100.0, 1.0), (200.0, 0.9), (400.0, 0.8)]
    hit = tokens_to_match(curve, 0.85)
    assert hit["bound"] == "interpolated" and math.isclose(hit["tokens"], math.sqrt(200 * 400))
    assert tokens_to_match(curve, 1.2) == {"tokens": 100.0, "bound": "at_most"}
    assert tokens_to_match(curve, 0.5) == {"tokens": None, "bound": "never"}


def _setting(full: list[float], small: list[float]) -> dict:
    from reproduce_choice import stats

    entry = {"loss": None, "accuracy": stats([0.5, 0.5, 0.5])}
    return {"seeds": 3, "budgets": {"1": {**entry, "loss": stats(full)}, "0.7": {**entry, "loss": stats(small)},
                                    "0.4": {**entry, "loss": stats(small)}}}


def test_the_choice_is_the_best_small_budget_that_does_not_hurt_the_full_model():
    table = {REFERENCE: _setting([0.90, 0.91, 0.92], [1.00, 1.01, 1.02]),
             "better_small_worse_full": _setting([0.95, 0.96, 0.97], [0.90, 0.91, 0.92]),
             "better_small": _setting([0.90, 0.91, 0.915], [0.95, 0.96, 0.97])}
    choice = choose(table)
    assert choice["best"] == "better_small"
    assert "better_small_worse_full" not in choice["eligible"]
    assert math.isclose(choice["small_gap"]["better_small"]["gap"], -0.05)


def test_budget_sampling_draws_the_full_model_a_third_of_the_time_and_is_a_function_of_the_step():
    from elastic_jax.train.elastic_step import sampled_weights

    budgets, weights = (1.0, 0.7, 0.4), (0.5, 0.3, 0.2)
    draws = [sampled_weights(weights, budgets, 7, i) for i in range(3000)]
    assert all(sorted(d) == [0.0, 0.0, 1.0] for d in draws)
    full = sum(d[0] for d in draws) / len(draws)
    small = sum(d[2] for d in draws) / len(draws)
    assert abs(full - 0.33) < 0.03 and abs(small - 0.67 * 0.4) < 0.03  # 0.4 drawn by 0.2 / (0.3 + 0.2)
    assert draws[5] == sampled_weights(weights, budgets, 7, 5)


def test_bad_elastic_knobs_name_the_field():
    from elastic_jax.config import ConfigError
    from elastic_jax.elastic.config import ElasticConfig

    with pytest.raises(ConfigError, match="budget_sampling"):
        ElasticConfig(budget_sampling="yes")
    with pytest.raises(ConfigError, match="normalize_weights"):
        ElasticConfig(normalize_weights=1)


def test_docs_are_rendered_from_the_results_json():
    """docs/results.md's nesting part and docs/training.md's settings table are exactly what reproduce_render.py
    makes of docs/reproduce_results.json: a number in the prose that disagrees with the JSON fails here."""
    summary = json.loads(RESULTS.read_text())
    rendered = render(summary)
    assert ROOT / "docs" / "results.md" in rendered and ROOT / "docs" / "training.md" in rendered
    for path, (now, expected) in rendered.items():
        assert now == expected, f"{path} differs from its rendering: run python benchmarks/reproduce_render.py"


def test_a_heterogeneous_slice_is_scored_through_the_parent():
    """Per-layer widths (elastic.router.heterogeneous) give a sliced config no router can serve (one width per axis);
    the evaluation then serves the slice from the parent, and scores it like any other row."""
    import jax
    from reproduce_eval import Evaluator, serving_engine
    from reproduce_plan import load_reproduce

    import elastic_jax as ej
    from elastic_jax.elastic.router import Router, RouterConfig
    from elastic_jax.elastic.slicing import slice_params
    from elastic_jax.elastic.spec import ElasticError, ElasticSpec
    from elastic_jax.train.loop import parse_experiment

    spec = parse_experiment(load_reproduce("", [*reproduce.SMOKE.overrides, "model.pattern=ME*E-"]))
    cfg, params = spec.model, ej.init_params(spec.model, 0)
    router = Router(cfg, RouterConfig(budgets=(1.0, 0.5), heterogeneous=True))
    het = router.spec_for(router.init(jax.random.PRNGKey(3)), 0.5)
    sub_params, sub_cfg = slice_params(params, cfg, het)
    with pytest.raises(ElasticError, match="differs between layers"):
        serving_engine(sub_cfg, sub_params, ElasticSpec(), spec.tokenizer)
    scored = Evaluator(spec, 2, 1)(cfg, params, het)
    assert math.isfinite(scored["loss"]) and 0.0 <= scored["accuracy"] <= 1.0
    assert scored["total_params"] == ej.count_params(sub_cfg)[0] < ej.count_params(cfg)[0]

"""benchmarks/reproduce.py end to end at the smoke scale: every row trains and is scored, the report is written,
and a rerun after one row's done-marker is removed runs that row alone, resuming it from its checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
sys.path.insert(0, str(SCRIPT.parent))

from reproduce import SMOKE, estimate  # noqa: E402
from reproduce_rows import BUDGETS, plan  # noqa: E402


def _run(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(workdir), "--scale", "smoke", "--jobs", "2"],
                          capture_output=True, text=True, cwd=ROOT)


def _executions(workdir: Path) -> list[str]:
    return [line.split()[1] for line in (workdir / "executions.log").read_text().splitlines()]


def _finite(entry: dict) -> bool:
    return all(isinstance(entry[k], (int, float)) and math.isfinite(entry[k])
               for k in ("loss", "accuracy", "total_params")) and entry["total_params"] > 0


def _check_results(workdir: Path) -> None:
    summary = json.loads((workdir / "results.json").read_text())
    rows = [r for r in plan(SMOKE) if not r.unavailable]
    assert summary["missing"] == []
    assert sorted(summary["rows"]) == sorted(r.name for r in rows)
    expected = {"parent": ["1"], "elastic": ["1", "0.7", "0.4"], "twin_TE": ["0.7", "0.4"], "twin_T": ["0.7", "0.4"],
                "minitron": ["0.7", "0.4"]}
    for method, budgets in expected.items():
        got = summary["methods"][method]["budgets"]
        assert sorted(got) == sorted(budgets), method
        for b in budgets:
            assert math.isfinite(got[b]["loss"]["mean"]) and 0 <= got[b]["accuracy"]["mean"] <= 1, (method, b)
    for row in rows:
        result = summary["rows"][row.name]
        assert result["tokens"] > 0 and all(_finite(e) for e in result["budgets"].values()), row.name
        if row.kind == "elastify":
            assert sorted(result["budgets"], key=float) == sorted(f"{b:g}" for b in BUDGETS)
            sizes = [result["budgets"][f"{b:g}"]["total_params"] for b in BUDGETS]
            assert sizes == sorted(sizes, reverse=True), (row.name, sizes)  # 1.0 >= 0.7 >= 0.4
    # twins and the Minitron-style students have exactly the elastic run's deployed architectures
    elastic = summary["rows"]["elastic_s0"]["budgets"]
    for name in ("twin_0.4_T_s0", "twin_0.7_TE_s0", "minitron_0.4", "minitron_0.7"):
        budget, entry = next(iter(summary["rows"][name]["budgets"].items()))
        assert entry["total_params"] == elastic[budget]["total_params"], name
    assert sorted(summary["gaps"]) == ["0.4", "0.7", "1"]  # the slice minus each model trained for its size
    assert sorted(summary["gaps"]["0.4"]) == ["minitron", "twin_T", "twin_TE"]
    assert list(summary["gaps"]["1"]) == ["parent"]
    twin = summary["methods"]["twin_T"]["budgets"]["0.4"]["loss"]["mean"]
    gap = summary["gaps"]["0.4"]["twin_T"]["loss"]["gap"]
    assert math.isclose(gap, summary["methods"]["elastic"]["budgets"]["0.4"]["loss"]["mean"] - twin)
    ratios = summary["token_ratios"]
    assert ratios["total_tokens"]["elastic"] == ratios["T"] + ratios["E"]
    assert ratios["separately_T_over_elastic"] > 1 and ratios["minitron_over_elastic"] > 1


def _check_report(workdir: Path) -> None:
    table = (workdir / "results.md").read_text()
    for text in ("budget 1", "budget 0.7", "budget 0.4", "elastic (one run)", "Minitron-style", "trained alone",
                 "Ablations", "vs elastic", "minus each model trained for that size"):
        assert text in table, text
    for name in ("loss_vs_params.png", "accuracy_vs_params.png"):
        data = (workdir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


@pytest.mark.slow
def test_smoke_scale_end_to_end_then_resumes_only_the_unfinished_row(tmp_path: Path):
    """One test (one run to share): every row and budget scored, the report written; a rerun after one row's
    DONE marker is removed executes that row alone, resuming its finished checkpoint (no step trained again)."""
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_results(tmp_path)
    _check_report(tmp_path)
    before = _executions(tmp_path)
    assert sorted(before) == sorted(r.name for r in plan(SMOKE) if not r.unavailable)  # each row ran once
    (tmp_path / "rows" / "twin_0.4_T_s0" / "DONE").unlink()
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _executions(tmp_path)[len(before):] == ["twin_0.4_T_s0"]
    assert "1 to run" in proc.stdout
    result = json.loads((tmp_path / "rows" / "twin_0.4_T_s0" / "result.json").read_text())
    assert result["train"]["resumed_from"] == SMOKE.pretrain_steps and result["train"]["steps_run"] == 0
    _check_results(tmp_path)


def test_estimate_respects_dependencies_and_jobs():
    from reproduce import DEFAULT

    rows = plan(DEFAULT)
    one, many = estimate(DEFAULT, rows, 1, 2), estimate(DEFAULT, rows, 8, 16)
    assert one > many > 0
    assert one <= 90 * 60  # the default scale is sized to fit 90 minutes on 2 cores


def test_a_heterogeneous_slice_is_scored_through_the_parent():
    """Per-layer widths (elastic.router.heterogeneous) give a sliced config no router can serve (one width per axis);
    the evaluation then serves the slice from the parent, and scores it like any other row."""
    import jax
    from reproduce_eval import Evaluator, serving_engine
    from reproduce_rows import load_reproduce

    import elastic_jax as ej
    from elastic_jax.elastic.router import Router, RouterConfig
    from elastic_jax.elastic.slicing import slice_params
    from elastic_jax.elastic.spec import ElasticError, ElasticSpec
    from elastic_jax.train.loop import parse_experiment

    spec = parse_experiment(load_reproduce("", [*SMOKE.overrides, "model.pattern=ME*E-"]))  # two MoE layers
    cfg, params = spec.model, ej.init_params(spec.model, 0)
    router = Router(cfg, RouterConfig(budgets=(1.0, 0.5), heterogeneous=True))
    het = router.spec_for(router.init(jax.random.PRNGKey(3)), 0.5)
    sub_params, sub_cfg = slice_params(params, cfg, het)
    with pytest.raises(ElasticError, match="differs between layers"):
        serving_engine(sub_cfg, sub_params, ElasticSpec(), spec.tokenizer)
    scored = Evaluator(spec, 2, 1)(cfg, params, het)
    assert math.isfinite(scored["loss"]) and 0.0 <= scored["accuracy"] <= 1.0
    assert scored["total_params"] == ej.count_params(sub_cfg)[0] < ej.count_params(cfg)[0]

"""Running one row of "Is nesting worth it?" (reproduce_plan.py) in its own directory.

Row directories: `<workdir>/rows/<name>/{run/, result.json, DONE}`; DONE is written last, so a row without it is
run again, resuming from its Orbax checkpoints. Every model a row yields is scored by reproduce_eval.Evaluator.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import ml_collections
from reproduce_choice import load_result
from reproduce_plan import (
    CURVE,
    SETTINGS,
    Row,
    Scale,
    elastic_name,
    elastic_steps,
    load_reproduce,
    row_steps,
    row_tokens,
    setting_overrides,
)

from elastic_jax.experiment import ExperimentConfig


def _common(row: Row) -> list[str]:
    # evaluation is done once at the end by reproduce_eval (the same held-out data for every row)
    return [f"train.seed={row.seed}", "train.eval_every=0", "train.eval_batches=0",
            "train.eval_prompts=0", "train.progress_bar=False"]


def _source(workdir: Path, scale: Scale, seed: int) -> str:
    """The curve's elastic row at E for `seed`: its deployed shapes (the search's, alike for every seed) and its
    ranking are the baselines'."""
    return elastic_name(CURVE, 1.0, seed)


def _budget_spec(workdir: Path, scale: Scale, row: Row):
    from elastic_jax.elastic.spec import ElasticSpec

    source = load_result(workdir, _source(workdir, scale, row.seed))
    return ElasticSpec.from_dict(source["budgets"][f"{row.budget:g}"]["spec"])


@functools.cache
def _evaluator(scale: Scale):
    from reproduce_eval import Evaluator

    from elastic_jax.train.loop import parse_experiment

    return Evaluator(parse_experiment(load_reproduce("", scale.overrides)), scale.problems, scale.eval_batches)


def _final(run_dir: Path) -> tuple[Any, dict, dict]:
    from elastic_jax.model_io import load_model

    return load_model(run_dir / "checkpoints")


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    """The loop's figures worth keeping: where it resumed, steps run now, train seconds, compilations."""
    return {k: result.get(k) for k in ("resumed_from", "steps_run", "train_seconds", "compiles", "loss")}


def _run_pretrain(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.train.loop import run_pretrain

    config = load_reproduce("", [*scale.overrides, *_common(row), f"train.total_steps={row_steps(scale, row)}"])
    if row.budget is not None:  # a twin: the parent's config cut to the budget's deployed architecture
        parent_cfg = ExperimentConfig.from_dict(config).model
        config.model = ml_collections.ConfigDict(_budget_spec(workdir, scale, row).apply_to(parent_cfg).to_dict())
    result = run_pretrain(config, str(run_dir))
    if result.get("preempted"):
        return None
    cfg, params, _ = _final(run_dir)
    return {"budgets": {"1" if row.budget is None else f"{row.budget:g}": _evaluator(scale)(cfg, params)},
            "train": _figures(result)}


def _run_elastify(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.quickstart import nests_in
    from elastic_jax.train.elastify import prepare_elastify, train_elastic

    setting = row.setting
    s1, s2 = elastic_steps(scale, row.point)
    config = load_reproduce("elastic", [*scale.overrides, *scale.elastic_overrides, *_common(row),
                                        f"elastic.stage1_steps={s1}", f"elastic.stage2_steps={s2}",
                                        *setting_overrides(setting), f"train.warmup_steps={_warmup(s1 + s2)}"])
    run = prepare_elastify(config, str(run_dir), str(workdir / "rows" / "parent" / "run" / "checkpoints"),
                           _searched(workdir, scale, row))
    train_elastic(run)
    if int(run.state.step) < run.ec.total_steps or run.result.get("preempted"):
        return None
    params = run.state.params
    specs = {b: run.specs.get(b) or run.router.spec_for(params["router"], b) for b in run.ec.budgets}
    evaluate = _evaluator(scale)
    out = {f"{b:g}": evaluate(run.spec.model, params["model"], spec) for b, spec in specs.items()}
    ordered = sorted(specs, reverse=True)
    for larger, smaller in zip(ordered, ordered[1:]):
        out[f"{smaller:g}"]["nests_in"] = nests_in(specs[smaller], specs[larger], run.spec.model)
    return {"budgets": out, "setting": setting, "ranked": run.ranking is not None, "train": _figures(run.result)}


def _searched(workdir: Path, scale: Scale, row: Row) -> dict | None:
    """The router-free search's architectures, from the first seed's curve run at E, which ran the search: it
    depends on the parent and the calibration data only (and on the seed of its sample when more candidates
    qualify than it scores), so every other run with fixed architectures reuses it: one shape per budget for
    every seed, setting and point, which the Minitron-style students and the twins then take."""
    from elastic_jax.elastic.spec import ElasticSpec

    source = elastic_name(CURVE, 1.0, scale.seeds[0])
    if row.name == source or not SETTINGS[row.setting][1].get("elastic.budget_search"):
        return None
    return {float(b): ElasticSpec.from_dict(v["spec"]) for b, v in load_result(workdir, source)["budgets"].items()}


def _warmup(steps: int) -> int:
    """The elastic configs' 20 warm-up steps, at most a quarter of a short run's."""
    return max(1, min(20, steps // 4))


def _run_distill(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.elastic.permute import permute_params
    from elastic_jax.model_io import read_metadata
    from elastic_jax.train.distill import run_distill

    elastic_cfg = load_reproduce("elastic", [*scale.overrides, *scale.elastic_overrides,
                                             *setting_overrides(CURVE)])
    # the student trains with the elastic run's learning rate and warm-up (the same optimiser settings)
    config = load_reproduce("", [*scale.overrides, *_common(row), f"train.total_steps={row_steps(scale, row)}",
                                 f"train.lr={elastic_cfg.train.lr}",
                                 f"train.warmup_steps={_warmup(row_steps(scale, row))}"])
    cfg, parent, _ = _final(workdir / "rows" / "parent" / "run")
    source = workdir / "rows" / _source(workdir, scale, row.seed) / "run" / "checkpoints"
    ranking = read_metadata(source)["elastic"]["ranking"]
    teacher = permute_params(parent, cfg, ranking) if ranking is not None else parent
    result = run_distill(config, run_dir, teacher, _budget_spec(workdir, scale, row),
                         elastic_cfg.elastic.kd_temperature)
    if result.get("preempted"):
        return None
    student_cfg, params, _ = _final(run_dir)
    return {"budgets": {f"{row.budget:g}": _evaluator(scale)(student_cfg, params)}, "train": _figures(result)}


RUNNERS = {"pretrain": _run_pretrain, "elastify": _run_elastify, "distill": _run_distill}


def run_row(workdir: Path, scale: Scale, row: Row) -> int:
    """Train and evaluate one row in <workdir>/rows/<name> (resuming); 0 when done (DONE written), 1 if stopped."""
    row_dir = workdir / "rows" / row.name
    if (row_dir / "DONE").exists():
        return 0
    row_dir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "executions.log", "a") as log:  # one line per execution: how tests count resumed rows
        log.write(f"{time.strftime('%H:%M:%S')} {row.name}\n")
    start = time.perf_counter()
    print(f"{row.name}: {row.kind}, {row_steps(scale, row)} steps, {row_tokens(scale, row):,} tokens", flush=True)
    result = RUNNERS[row.kind](workdir, scale, row, row_dir / "run")
    if result is None:
        print(f"{row.name}: stopped before the end; rerun to resume", flush=True)
        return 1
    result.update(row=row.name, method=row.method, seed=row.seed, size=row.budget, point=row.point,
                  tokens=row_tokens(scale, row), steps=row_steps(scale, row), seconds=time.perf_counter() - start)
    (row_dir / "result.json").write_text(json.dumps(result, indent=1))
    (row_dir / "DONE").write_text("")
    print(json.dumps(result), flush=True)
    return 0

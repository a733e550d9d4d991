"""The rows of the "Does nesting work?" experiment (benchmarks/reproduce.py): what each trains, on what, and how
one row runs in its own directory.

A row is one training run, scored by reproduce_eval.Evaluator for every model it yields:
- `parent_s<k>`: the parent pretrained from scratch for T tokens (seed k);
- `elastic_s<k>`: elastification of parent k into budgets 1.0 / 0.7 / 0.4 for E tokens;
- `twin_<b>_TE_s<k>` / `twin_<b>_T_s<k>`: a model of exactly budget b's deployed architecture (elastic_s0's),
  trained from scratch for T + E / T tokens;
- `minitron_<b>`: parent 0 pruned to budget b's architecture (the prefix of the importance-permuted parent, the
  ranking elastic_s0 used) and distilled from the parent for E tokens;
- `ablation_<name>`: elastification of parent 0 with one setting changed.
Row directories: `<workdir>/rows/<name>/{run/, result.json, DONE}`; DONE is written last, so a row without it is
run again, resuming from its Orbax checkpoints.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from elastic_jax.config import ConfigError
from elastic_jax.experiment import ExperimentConfig, apply_overrides

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "reproduce.py"
BUDGETS = (1.0, 0.7, 0.4)
SMALL_BUDGETS = (0.7, 0.4)


@dataclasses.dataclass(frozen=True)
class Scale:
    """One size of the experiment. Steps count batches of train.global_batch rows; T and the twins use
    train.seq_len, the elastic stages their own lengths (E tokens = batch * (stage1 * len1 + stage2 * len2))."""

    name: str
    pretrain_steps: int
    stage1_steps: int
    stage2_steps: int
    seeds: tuple[int, ...]
    problems: int  # held-out reasoning problems per evaluation
    eval_batches: int  # held-out loss batches per evaluation
    overrides: tuple[str, ...] = ()  # applied to configs/reproduce.py (parent and elastic)
    elastic_overrides: tuple[str, ...] = ()  # applied to the elastic experiment only
    ablations: tuple[str, ...] | None = None  # the ABLATIONS rows this scale runs (None: every one)


def load_reproduce(kind: str, overrides: tuple[str, ...] | list[str]) -> ml_collections.ConfigDict:
    """configs/reproduce.py's parent (kind "") or elastic ("elastic") experiment, with overrides."""
    spec = importlib.util.spec_from_file_location("elastic_jax_config_reproduce", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return apply_overrides(module.get_config(kind), list(overrides))


def _elastic(scale: Scale, extra: tuple[str, ...] | list[str] = ()) -> ml_collections.ConfigDict:
    return load_reproduce("elastic", [*scale.overrides, *scale.elastic_overrides, *extra])


def _elastic_default(key: str) -> Any:
    """A field of the experiment's elastic section as it parses (schema defaults included); None if unknown."""
    tree = ExperimentConfig.from_dict(load_reproduce("elastic", ())).require_elastic()
    node: Any = tree
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


# One changed setting each, against the default elastic run (elastic_s0). A value that is a function gets the
# default and returns the override; a knob this version does not have makes its row "unavailable" (skipped).
ABLATIONS: dict[str, tuple[str, str, Any]] = {
    # name: (what it compares, field, override value or function of the default)
    "router_free": ("router vs the router-free budget search", "elastic.budget_search", lambda d: not d),
    "random_order": ("importance order vs random order", "elastic.importance_order", "random"),
    "uniform_weights": ("stage-2 weights vs uniform", "elastic.stage2_weights", (1.0, 1.0, 1.0)),
    "heterogeneous": ("homogeneous vs heterogeneous (per-layer) choices", "elastic.router.heterogeneous",
                      lambda d: not d),
    "nested_flip": ("nested chain vs free per-budget choices (the other of the two)", "elastic.router.nested",
                    lambda d: not d),
}


def ablation_override(name: str) -> tuple[str | None, str]:
    """(the override string, or None when unavailable; what it compares or why it is unavailable)."""
    what, key, value = ABLATIONS[name]
    try:
        if callable(value):
            default = _elastic_default(key.removeprefix("elastic."))
            if default is None:
                return None, f"this version has no {key}"
            value = value(default)
        override = f"{key}={value!r}"
        ExperimentConfig.from_dict(load_reproduce("elastic", [override]))
    except ConfigError as err:
        return None, f"this version cannot set {key}: {str(err).splitlines()[0]}"
    return override, f"{what}: {override}"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "pretrain" | "elastify" | "distill"
    method: str  # "parent" | "elastic" | "twin_TE" | "twin_T" | "minitron" | "ablation"
    seed: int = 0
    budget: float | None = None  # the size a twin or Minitron row trains
    deps: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    note: str = ""
    unavailable: bool = False


def elastic_token_steps(scale: Scale) -> int:
    """E in steps of train.seq_len rows: the elastic run's tokens / (batch * seq_len)."""
    seq = load_reproduce("", scale.overrides).train.seq_len
    el = _elastic(scale).elastic
    tokens = scale.stage1_steps * el.stage1_seq_len + scale.stage2_steps * el.stage2_seq_len
    if tokens % seq:
        raise ConfigError(f"the elastic stages' tokens per row ({tokens}) must be a multiple of train.seq_len ({seq})")
    return tokens // seq


def plan(scale: Scale) -> list[Row]:
    """Every row of the experiment, dependencies before dependents."""
    rows = [Row(f"parent_s{k}", "pretrain", "parent", k) for k in scale.seeds]
    rows += [Row(f"elastic_s{k}", "elastify", "elastic", k, deps=(f"parent_s{k}",)) for k in scale.seeds]
    first = scale.seeds[0]
    for b in SMALL_BUDGETS:
        for k in scale.seeds:
            rows.append(Row(f"twin_{b:g}_TE_s{k}", "pretrain", "twin_TE", k, b, (f"elastic_s{first}",)))
            rows.append(Row(f"twin_{b:g}_T_s{k}", "pretrain", "twin_T", k, b, (f"elastic_s{first}",)))
        rows.append(Row(f"minitron_{b:g}", "distill", "minitron", first, b, (f"parent_s{first}", f"elastic_s{first}")))
    for name in ABLATIONS if scale.ablations is None else scale.ablations:
        override, note = ablation_override(name)
        rows.append(Row(f"ablation_{name}", "elastify", "ablation", first, None, (f"parent_s{first}",),
                        (override,) if override else (), note, override is None))
    return rows


def row_steps(scale: Scale, row: Row) -> int:
    """Optimizer steps a row trains."""
    if row.kind == "elastify":
        return scale.stage1_steps + scale.stage2_steps
    if row.method in ("parent", "twin_T"):
        return scale.pretrain_steps
    if row.method == "twin_TE":
        return scale.pretrain_steps + elastic_token_steps(scale)
    return elastic_token_steps(scale)  # minitron: E tokens at train.seq_len


def row_tokens(scale: Scale, row: Row) -> int:
    """Training tokens the row cost (rows x sequence length per step, summed)."""
    train = load_reproduce("", scale.overrides).train
    if row.kind == "elastify":
        el = _elastic(scale).elastic
        return train.global_batch * (scale.stage1_steps * el.stage1_seq_len + scale.stage2_steps * el.stage2_seq_len)
    return train.global_batch * train.seq_len * row_steps(scale, row)


# ---- running one row -----------------------------------------------------------------------------------------
def _common(row: Row) -> list[str]:
    # evaluation is done once at the end by reproduce_eval (the same held-out data for every row)
    return [f"train.seed={row.seed}", "train.eval_every=0", "train.eval_batches=0",
            "train.eval_prompts=0", "train.progress_bar=False"]


def _read_result(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / "rows" / name / "result.json").read_text())


def _budget_spec(workdir: Path, scale: Scale, budget: float):
    from elastic_jax.elastic.spec import ElasticSpec

    source = _read_result(workdir, f"elastic_s{scale.seeds[0]}")
    return ElasticSpec.from_dict(source["budgets"][f"{budget:g}"]["spec"])


def _evaluator(scale: Scale):
    from reproduce_eval import Evaluator

    from elastic_jax.train.loop import parse_experiment

    return Evaluator(parse_experiment(load_reproduce("", scale.overrides)), scale.problems, scale.eval_batches)


def _final(run_dir: Path) -> tuple[Any, dict, dict]:
    from elastic_jax.model_io import load_model

    return load_model(run_dir / "checkpoints")


def _run_pretrain(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.train.loop import run_pretrain

    config = load_reproduce("", [*scale.overrides, *_common(row), f"train.total_steps={row_steps(scale, row)}"])
    if row.budget is not None:  # a twin: the parent's config cut to the budget's deployed architecture
        parent_cfg = ExperimentConfig.from_dict(config).model
        config.model = ml_collections.ConfigDict(_budget_spec(workdir, scale, row.budget).apply_to(parent_cfg)
                                                 .to_dict())
    result = run_pretrain(config, str(run_dir))
    if result.get("preempted"):
        return None
    cfg, params, _ = _final(run_dir)
    return {"budgets": {"1" if row.budget is None else f"{row.budget:g}": _evaluator(scale)(cfg, params)},
            "train": _figures(result)}


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    """The loop's figures worth keeping: where it resumed, steps run now, train seconds, compilations."""
    return {k: result.get(k) for k in ("resumed_from", "steps_run", "train_seconds", "compiles", "loss")}


def _run_elastify(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.quickstart import nests_in
    from elastic_jax.train.elastify import prepare_elastify, train_elastic

    config = _elastic(scale, [*_common(row), f"elastic.stage1_steps={scale.stage1_steps}",
                              f"elastic.stage2_steps={scale.stage2_steps}", *row.overrides])
    run = prepare_elastify(config, str(run_dir), str(workdir / "rows" / f"parent_s{row.seed}" / "run" / "checkpoints"))
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
    return {"budgets": out, "ranked": run.ranking is not None, "train": _figures(run.result)}


def _run_distill(workdir: Path, scale: Scale, row: Row, run_dir: Path) -> dict[str, Any] | None:
    from elastic_jax.elastic.permute import permute_params
    from elastic_jax.model_io import read_metadata
    from elastic_jax.train.distill import run_distill

    elastic_cfg = _elastic(scale)
    config = load_reproduce("", [*scale.overrides, *_common(row), f"train.total_steps={row_steps(scale, row)}",
                                 f"train.lr={elastic_cfg.train.lr}",
                                 f"train.warmup_steps={elastic_cfg.train.warmup_steps}"])
    cfg, parent, _ = _final(workdir / "rows" / f"parent_s{row.seed}" / "run")
    source = workdir / "rows" / f"elastic_s{scale.seeds[0]}" / "run" / "checkpoints"
    ranking = read_metadata(source)["elastic"]["ranking"]
    teacher = permute_params(parent, cfg, ranking) if ranking is not None else parent
    result = run_distill(config, run_dir, teacher, _budget_spec(workdir, scale, row.budget),
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
    result.update(row=row.name, method=row.method, seed=row.seed, size=row.budget, tokens=row_tokens(scale, row),
                  steps=row_steps(scale, row), seconds=time.perf_counter() - start, note=row.note,
                  overrides=list(row.overrides))
    (row_dir / "result.json").write_text(json.dumps(result, indent=1))
    (row_dir / "DONE").write_text("")
    print(json.dumps(result), flush=True)
    return 0

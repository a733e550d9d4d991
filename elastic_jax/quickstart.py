"""`elastic-jax quickstart`: the whole method end to end on a CPU, with nothing to download.

Pretrain a tiny parent on the built-in data (synthetic reasoning + the Python standard library's source), rank
and permute it, elastify it into nested 100% / 70% / 40% models in one run, slice every budget out of the one
checkpoint, evaluate each, print a table and export every budget as a Hugging Face directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from elastic_jax.config import ModelConfig
from elastic_jax.convert.hf import to_hf
from elastic_jax.elastic.accounting import format_count
from elastic_jax.elastic.search import nests_in
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.experiment import ExperimentConfig, load_experiment
from elastic_jax.model_io import load_model, model_config_of, read_metadata
from elastic_jax.train.elastify import run_elastify
from elastic_jax.train.loop import run_pretrain


def _nests_column(rows: list[dict[str, Any]], cfg: ModelConfig) -> list[str]:
    """Per row: "yes"/"NO" for whether its spec nests in the next larger budget's ("-" for the largest)."""
    out = []
    for row in rows:
        larger = [r for r in rows if r["budget"] > row["budget"]]
        if not larger:
            out.append("-")
            continue
        nxt = min(larger, key=lambda r: r["budget"])
        ok = nests_in(ElasticSpec.from_dict(row["spec"]), ElasticSpec.from_dict(nxt["spec"]), cfg)
        out.append(f"{'yes' if ok else 'NO'} {nxt['budget']:g}")
    return out


def _fmt_row(row: dict[str, Any], nests: str | None) -> str:
    acc = row.get("accuracy")
    zacc = row.get("zero_shot_accuracy")
    acc_text = "   -   " if acc is None else f"{zacc:5.1%} -> {acc:5.1%}"
    text = (f"{row['budget']:>6.2f} {format_count(row['total_params']):>9} {format_count(row['active_params']):>9} "
            f"{row['total_fraction']:>7.1%} {row['zero_shot_loss']:>9.4f} {row['loss']:>9.4f}  {acc_text:>17} "
            f"{row['tokens_per_s']:>10,.0f}")
    return text if nests is None else f"{text} {nests:>8}"


def format_table(rows: list[dict[str, Any]], cfg: ModelConfig | None = None) -> str:
    """The per-budget table: size, zero-shot vs trained eval loss, task accuracy, forward tokens/s, and (given the
    parent's `cfg`) whether each budget nests in the next larger one."""
    head = (f"{'budget':>6} {'total':>9} {'active':>9} {'of full':>7} {'zero-shot':>9} {'elastic':>9}  "
            f"{'accuracy (0-shot -> elastic)':>17} {'tokens/s':>10}")
    nests = [None] * len(rows) if cfg is None else _nests_column(rows, cfg)
    if cfg is not None:
        head += f" {'nests in':>8}"
    parent = rows[0].get("parent_loss") if rows else None
    lines = [head, "-" * len(head), *(_fmt_row(r, n) for r, n in zip(rows, nests, strict=True))]
    if parent is not None:
        lines.append(f"parent eval loss {parent:.4f}; losses are next-token cross-entropy on held-out data")
    if cfg is not None:
        lines.append("nests in: whether every width on every axis is <= the next larger budget's (and its layers "
                     "are among that budget's)")
    return "\n".join(lines)


def elastify_report(result: dict[str, Any], checkpoint: str | Path) -> str:
    """What `elastic-jax elastify` prints: the per-budget table (parent config read from `checkpoint`) and the
    run's other figures on one line; a stopped run (no table yet) prints its figures only."""
    figures = json.dumps({k: v for k, v in result.items() if k != "budgets"}, default=str)
    if "budgets" not in result:
        return figures
    cfg = model_config_of(checkpoint, read_metadata(checkpoint))
    return f"{format_table(result['budgets'], cfg)}\n{figures}"


def run_quickstart(workdir: str = "quickstart", pretrain_steps: int = 600, elastic_steps: int = 240,
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every stage into `workdir` (each stage resumes if interrupted) and return the per-budget table."""
    root = Path(workdir).absolute()
    start = time.perf_counter()
    print(f"[1/4] pretraining the tiny parent ({pretrain_steps} steps) in {root / 'parent'}", flush=True)
    parent_cfg = load_experiment("tiny", [f"train.total_steps={pretrain_steps}", *[o for o in overrides
                                                                                   if not o.startswith("elastic.")]])
    stage1 = int(elastic_steps * 2 / 3)
    elastic_cfg = load_experiment("tiny_elastic", [f"elastic.stage1_steps={stage1}",
                                                   f"elastic.stage2_steps={elastic_steps - stage1}", *overrides])
    ExperimentConfig.from_dict(elastic_cfg)  # both stages' configs are checked before the first one runs
    pretrain = run_pretrain(parent_cfg, str(root / "parent"))
    if pretrain.get("preempted"):  # a stop signal saved the parent part-way: rerunning resumes it
        print(f"      stopped at pretraining step {pretrain.get('step')}; run the same command again to resume",
              flush=True)
        return pretrain
    print(f"      parent: {json.dumps({k: v for k, v in pretrain.items() if 'eval' in k or k == 'step'})}", flush=True)

    print(f"[2/4] ranking, permuting and elastifying into budgets 1.0 / 0.7 / 0.4 ({elastic_steps} steps)",
          flush=True)
    result = run_elastify(elastic_cfg, str(root / "elastic"), str(root / "parent" / "checkpoints"))
    if "budgets" not in result:
        return result
    rows = result["budgets"]

    print("[3/4] slicing and exporting every budget as a Hugging Face directory", flush=True)
    cfg, params, _ = load_model(root / "elastic" / "checkpoints")
    for row in rows:
        sub_params, sub_cfg = slice_params(params["model"], cfg, ElasticSpec.from_dict(row["spec"]))
        out = root / "export" / f"budget_{row['budget']:g}"
        if not (out / "config.json").exists():
            to_hf(sub_cfg, sub_params, out)
        row["export"] = str(out)

    print(f"[4/4] done in {time.perf_counter() - start:.0f} s\n", flush=True)
    print(format_table(rows, cfg), flush=True)
    (root / "budgets.json").write_text(json.dumps(rows, indent=1))
    return {"budgets": rows, "seconds": time.perf_counter() - start}

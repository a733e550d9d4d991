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

from elastic_jax.elastic.accounting import format_count
from elastic_jax.experiment import ExperimentConfig, load_experiment


def _fmt_row(row: dict[str, Any]) -> str:
    acc = row.get("accuracy")
    zacc = row.get("zero_shot_accuracy")
    acc_text = "   -   " if acc is None else f"{zacc:5.1%} -> {acc:5.1%}"
    return (f"{row['budget']:>6.2f} {format_count(row['total_params']):>9} {format_count(row['active_params']):>9} "
            f"{row['total_fraction']:>7.1%} {row['zero_shot_loss']:>9.4f} {row['loss']:>9.4f}  {acc_text:>17} "
            f"{row['tokens_per_s']:>10,.0f}")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-budget table: size, zero-shot vs trained eval loss, task accuracy, forward tokens/s."""
    head = (f"{'budget':>6} {'total':>9} {'active':>9} {'of full':>7} {'zero-shot':>9} {'elastic':>9}  "
            f"{'accuracy (0-shot -> elastic)':>17} {'tokens/s':>10}")
    parent = rows[0].get("parent_loss") if rows else None
    lines = [head, "-" * len(head), *(_fmt_row(r) for r in rows)]
    if parent is not None:
        lines.append(f"parent eval loss {parent:.4f}; losses are next-token cross-entropy on held-out data")
    return "\n".join(lines)


def run_quickstart(workdir: str = "quickstart", pretrain_steps: int = 600, elastic_steps: int = 240,
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every stage into `workdir` (each stage resumes if interrupted) and return the per-budget table."""
    from elastic_jax.convert.hf import to_hf
    from elastic_jax.elastic.slicing import slice_params
    from elastic_jax.elastic.spec import ElasticSpec
    from elastic_jax.model_io import load_model
    from elastic_jax.train.elastify import run_elastify
    from elastic_jax.train.loop import run_pretrain

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
    print(format_table(rows), flush=True)
    (root / "budgets.json").write_text(json.dumps(rows, indent=1))
    return {"budgets": rows, "seconds": time.perf_counter() - start}

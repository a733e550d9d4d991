"""Which elastic setting becomes the default: the best on the smallest budget that does not hurt the full model.

Every setting of reproduce_plan.SETTINGS trains at E on every seed. A setting is eligible when its full model's
mean eval loss is no worse than the reference's (the old default) by more than the spread of the difference (one
standard error); among the eligible ones the lowest mean eval loss at the smallest budget wins.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from reproduce_plan import BUDGETS, REFERENCE, Scale, elastic_name


def stats(values: list[float]) -> dict[str, Any]:
    """Mean and spread (sample standard deviation; 0 for one value) of finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "spread": None, "n": 0, "values": []}
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "n": len(values), "values": values}


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a - b of two means with the standard error of that difference, sqrt(sa^2 / na + sb^2 / nb)."""
    return {"gap": a["mean"] - b["mean"], "spread": math.sqrt(a["spread"] ** 2 / a["n"] + b["spread"] ** 2 / b["n"])}


def load_result(root: Path, name: str) -> dict[str, Any] | None:
    """A finished row's result.json (None until its DONE marker exists)."""
    row = root / "rows" / name
    return json.loads((row / "result.json").read_text()) if (row / "DONE").exists() else None


def setting_table(root: Path, scale: Scale) -> dict[str, Any]:
    """Per setting and budget: eval loss and accuracy over the seeds finished at E."""
    table: dict[str, Any] = {}
    for setting in scale.settings:
        found = [r for k in scale.seeds if (r := load_result(root, elastic_name(setting, 1.0, k)))]
        if found:
            table[setting] = {"seeds": len(found), "budgets": {
                f"{b:g}": {m: stats([r["budgets"][f"{b:g}"][m] for r in found]) for m in ("loss", "accuracy")}
                for b in BUDGETS}}
    return table


def choose(table: dict[str, Any]) -> dict[str, Any]:
    """The best setting and why: {"best", "eligible", "full_gap", "small_gap"} against the reference."""
    small, full = f"{min(BUDGETS):g}", f"{max(BUDGETS):g}"
    base = table[REFERENCE]["budgets"]
    full_gap = {s: difference(t["budgets"][full]["loss"], base[full]["loss"]) for s, t in table.items()}
    small_gap = {s: difference(t["budgets"][small]["loss"], base[small]["loss"]) for s, t in table.items()}
    eligible = [s for s, g in full_gap.items() if g["gap"] <= g["spread"]]
    best = min(eligible, key=lambda s: table[s]["budgets"][small]["loss"]["mean"])
    return {"best": best, "eligible": eligible, "full_gap": full_gap, "small_gap": small_gap}

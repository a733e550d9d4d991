"""The results of "Is nesting worth it?": results.json (curves, the tokens-to-match headline, the settings and the
parent check), results.md and the plots, from the finished rows of a benchmarks/reproduce.py work directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reproduce_choice import choose, difference, load_result, setting_table, stats
from reproduce_plan import CURVE, REFERENCE, SETTINGS, SMALL_BUDGETS, Row, Scale, e_steps, elastic_name, row_tokens


def row_summary(root: Path, name: str) -> str:
    """One line of a finished row's figures (its progress line)."""
    result = load_result(root, name)
    if result is None:
        return "no result"
    parts = [f"{b}: loss {v['loss']:.4f} acc {v['accuracy']:.1%}" for b, v in result["budgets"].items()]
    return f"{result['tokens']:,} tokens; " + "; ".join(parts)


def _entry(results: list[dict[str, Any]], budget: str) -> dict[str, Any]:
    found = [r["budgets"][budget] for r in results if budget in r["budgets"]]
    return {m: stats([f[m] for f in found]) for m in ("loss", "accuracy", "total_params")}


def curve_rows(scale: Scale) -> dict[str, dict[float, list[str]]]:
    """Per method, per point: the row names (one per seed) of the curve."""
    out = {"elastic": {p: [elastic_name(CURVE, p, k) for k in scale.seeds] for p in scale.points}}
    for b in SMALL_BUDGETS:
        out[f"minitron_{b:g}"] = {p: [f"minitron_{b:g}_x{p:g}_s{k}" for k in scale.seeds] for p in scale.points}
    return out


def curves(root: Path, scale: Scale, e_tokens: int) -> dict[str, Any]:
    """Eval loss / accuracy / parameters per budget and point, over seeds; tokens are each family's total beyond
    the parent (the elastic run's, or the two Minitron runs' of the pair)."""
    out: dict[str, Any] = {"elastic": {}, "minitron": {}}
    for method, points in curve_rows(scale).items():
        for p, names in points.items():
            results = [r for n in names if (r := load_result(root, n))]
            if not results:
                continue
            budgets = ["1", "0.7", "0.4"] if method == "elastic" else [method.split("_")[1]]
            for b in budgets:
                kind = "elastic" if method == "elastic" else "minitron"
                out[kind].setdefault(b, []).append({"point": p, "tokens": round(p * e_tokens), "seeds": len(results),
                                                    **_entry(results, b),
                                                    "per_seed": [r["budgets"][b]["loss"] for r in results]})
    return out


def tokens_to_match(points: list[tuple[float, float]], target: float) -> dict[str, Any]:
    """Tokens at which a loss curve [(tokens, loss)] first reaches `target`, interpolated linearly in log tokens;
    "below" when its first point already does (an upper bound), "never" when no point does."""
    points = sorted(points)
    if points[0][1] <= target:
        return {"tokens": points[0][0], "bound": "at_most"}
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l1 <= target:
            frac = (l0 - target) / (l0 - l1)
            return {"tokens": math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))), "bound": "interpolated"}
    return {"tokens": None, "bound": "never"}


def headline(curve: dict[str, Any], e_tokens: int) -> dict[str, Any]:
    """Per smaller budget: the elastic tokens that match Minitron-style at E (the pair's total), on the mean curves
    and per seed, with the spread of the per-seed figures."""
    out: dict[str, Any] = {}
    for b in (f"{b:g}" for b in SMALL_BUDGETS):
        target = next((e for e in curve["minitron"].get(b, []) if e["point"] == 1.0), None)
        elastic = curve["elastic"].get(b, [])
        if not target or not target["loss"]["n"] or not elastic:
            continue
        mean = tokens_to_match([(e["tokens"], e["loss"]["mean"]) for e in elastic], target["loss"]["mean"])
        seeds = [tokens_to_match([(e["tokens"], e["per_seed"][k]) for e in elastic], target["per_seed"][k])
                 for k in range(min(len(target["per_seed"]), *(len(e["per_seed"]) for e in elastic)))]
        found = [s["tokens"] / e_tokens for s in seeds if s["tokens"] is not None]
        out[b] = {"target_loss": target["loss"], "mean_curve": mean,
                  "ratio_of_E": None if mean["tokens"] is None else mean["tokens"] / e_tokens,
                  "per_seed": seeds, "per_seed_ratio": stats(found) if len(found) == len(seeds) else None}
    return out


def parent_check(root: Path, scale: Scale, parent: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the parent beats its smaller twins trained alone for T + E (each seed's shape): the parent is then
    trained long enough to be the teacher."""
    out: dict[str, Any] = {"budgets": {}}
    for b in (f"{b:g}" for b in SMALL_BUDGETS):
        twins = [r for k in scale.seeds if (r := load_result(root, f"twin_{b}_s{k}"))]
        if twins and parent:
            entry = _entry(twins, b)
            out["budgets"][b] = {**entry, "twin_losses": entry["loss"]["values"],
                                 "parent_beats_every_twin": all(t > parent["loss"] for t in entry["loss"]["values"])}
    out["holds"] = bool(out["budgets"]) and all(v["parent_beats_every_twin"] for v in out["budgets"].values())
    return out


def aggregate(root: Path, scale: Scale, rows: list[Row]) -> dict[str, Any]:
    """Everything the report shows, from the finished rows."""
    results = {r.name: res for r in rows if (res := load_result(root, r.name))}
    table = setting_table(root, scale)
    choice = choose(table) if REFERENCE in table else None
    e_tokens = row_tokens(scale, next(r for r in rows if r.kind == "elastify" and r.point == 1.0))
    parent = results.get("parent", {}).get("budgets", {}).get("1")
    curve = curves(root, scale, e_tokens)
    for s, t in table.items():
        t["what"] = SETTINGS[s][0]
    return {"scale": scale.name, "seeds": list(scale.seeds), "points": list(scale.points),
            "T": row_tokens(scale, rows[0]), "E": e_tokens, "E_steps": e_steps(scale),
            "problems": scale.problems, "parent": parent, "parent_check": parent_check(root, scale, parent),
            "settings": table, "choice": choice, "curves": curve, "headline": headline(curve, e_tokens),
            "planned": len(rows), "missing": [r.name for r in rows if r.name not in results], "rows": results}


def write_report(root: Path, scale: Scale, rows: list[Row]) -> list[Path]:
    from reproduce_plots import plots
    from reproduce_render import results_markdown

    summary = aggregate(root, scale, rows)
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    paths = [root / "results.json"]
    (root / "results.md").write_text(results_markdown(summary))
    return [*paths, root / "results.md", *plots(summary, root)]


__all__ = ["aggregate", "difference", "headline", "row_summary", "tokens_to_match", "write_report"]

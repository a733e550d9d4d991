"""The "Does nesting work?" report: results.json, the Markdown table, the plots and the token ratios, from the
finished rows of a benchmarks/reproduce.py work directory (rows not finished are listed as missing)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from reproduce_rows import ABLATIONS, BUDGETS, Row, Scale, row_tokens

# (method, label) in table order; a method's rows are its seeds.
METHODS = (("parent", "parent alone, T"), ("elastic", "elastic (one run), T + E"),
           ("twin_TE", "trained alone, T + E"), ("twin_T", "trained alone, T"),
           ("minitron", "Minitron-style: prune + distil, T + E per size"))


def _load(root: Path, name: str) -> dict[str, Any] | None:
    path = root / "rows" / name / "result.json"
    return json.loads(path.read_text()) if (root / "rows" / name / "DONE").exists() and path.exists() else None


def row_summary(root: Path, name: str) -> str:
    """One line of a finished row's figures (its progress line)."""
    result = _load(root, name)
    if result is None:
        return "no result"
    parts = [f"{b}: loss {v['loss']:.4f} acc {v['accuracy']:.1%}" for b, v in result["budgets"].items()]
    return f"{result['tokens']:,} tokens; " + "; ".join(parts)


def stats(values: list[float]) -> dict[str, Any]:
    """Mean and spread (sample standard deviation; 0 for one value) of finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "spread": None, "n": 0}
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "n": len(values), "values": values}


def aggregate(root: Path, scale: Scale, rows: list[Row]) -> dict[str, Any]:
    """Per method and budget: loss, accuracy and parameters over seeds; tokens per row; missing rows."""
    results = {r.name: _load(root, r.name) for r in rows if not r.unavailable}
    methods: dict[str, Any] = {}
    for method, label in METHODS:
        members = [r for r in rows if r.method == method and results.get(r.name)]
        per_budget: dict[str, Any] = {}
        for budget in BUDGETS:
            key = f"{budget:g}"
            found = [results[r.name]["budgets"][key] for r in members if key in results[r.name]["budgets"]]
            if found:
                per_budget[key] = {"loss": stats([f["loss"] for f in found]),
                                   "accuracy": stats([f["accuracy"] for f in found]),
                                   "total_params": stats([f["total_params"] for f in found]),
                                   "nests_in": [f.get("nests_in") for f in found]}
        if per_budget:
            methods[method] = {"label": label, "budgets": per_budget, "seeds": sorted({r.seed for r in members}),
                               "tokens_per_run": sorted({results[r.name]["tokens"] for r in members})}
    ablations = {r.name: {"note": r.note, "unavailable": r.unavailable, "result": results.get(r.name)}
                 for r in rows if r.method == "ablation"}
    missing = [r.name for r in rows if not r.unavailable and results.get(r.name) is None]
    return {"scale": scale.name, "methods": methods, "ablations": ablations, "missing": missing,
            "gaps": gaps(methods), "token_ratios": token_ratios(scale, rows),
            "rows": {k: v for k, v in results.items() if v}}


# (reference method, label): what the nested model is compared with, per budget
GAP_REFERENCES = (("parent", "the parent (budget 1)"), ("twin_TE", "trained alone, T + E"),
                  ("twin_T", "trained alone, T"), ("minitron", "Minitron-style"))


def _difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a - b of two means, with the spread of that difference: the standard error of a difference of independent
    means, sqrt(sa^2 / na + sb^2 / nb) (a one-seed side contributes its own spread, 0)."""
    spread = math.sqrt(a["spread"] ** 2 / a["n"] + b["spread"] ** 2 / b["n"])
    return {"gap": a["mean"] - b["mean"], "spread": spread}


def gaps(methods: dict[str, Any]) -> dict[str, Any]:
    """Per budget, the elastic slice minus each reference trained for that size: eval loss (positive: the slice
    is worse) and accuracy (negative: the slice is worse), each with the spread of the difference."""
    elastic = methods.get("elastic", {}).get("budgets", {})
    out: dict[str, Any] = {}
    for budget, mine in elastic.items():
        for ref, _ in GAP_REFERENCES:
            theirs = methods.get(ref, {}).get("budgets", {}).get(budget)
            if theirs and mine["loss"]["n"] and theirs["loss"]["n"]:
                out.setdefault(budget, {})[ref] = {k: _difference(mine[k], theirs[k]) for k in ("loss", "accuracy")}
    return out


def token_ratios(scale: Scale, rows: list[Row]) -> dict[str, Any]:
    """Training tokens to get all three sizes: one elastic run vs each size separately vs Minitron-style."""
    by_method = {r.method: row_tokens(scale, r) for r in rows}
    t, e, t_e = by_method["parent"], by_method["elastic"], by_method["twin_TE"]
    smaller = len(BUDGETS) - 1
    family = {"elastic": t + e, "separately_T": t + smaller * t, "separately_T_plus_E": t + smaller * t_e,
              "minitron": t + smaller * by_method["minitron"]}
    return {"T": t, "E": e, "total_tokens": family,
            "separately_T_over_elastic": family["separately_T"] / family["elastic"],
            "separately_T_plus_E_over_elastic": family["separately_T_plus_E"] / family["elastic"],
            "minitron_over_elastic": family["minitron"] / family["elastic"],
            "beyond_parent": {"elastic": e, "separately_T": smaller * t, "minitron": smaller * by_method["minitron"]},
            "beyond_parent_separately_over_elastic": smaller * t / e,
            "beyond_parent_minitron_over_elastic": smaller * by_method["minitron"] / e}


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    loss, acc = entry["loss"], entry["accuracy"]
    if loss["n"] > 1:
        return f"{loss['mean']:.4f} ± {loss['spread']:.4f} / {acc['mean']:.1%} ± {acc['spread']:.1%}"
    return f"{loss['mean']:.4f} / {acc['mean']:.1%}"


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def markdown(summary: dict[str, Any]) -> str:
    """The table (rows x budgets: eval loss / accuracy, mean ± spread over seeds), ablations and token ratios."""
    heads = " | ".join(f"budget {b:g}" for b in BUDGETS)
    lines = [f"Eval loss / reasoning accuracy, mean ± standard deviation over seeds (scale `{summary['scale']}`).",
             "", f"| method | seeds | {heads} | tokens per run |", "|---|---|" + "---|" * len(BUDGETS) + "---|"]
    params = {}
    for data in summary["methods"].values():
        cells = " | ".join(_cell(data["budgets"].get(f"{b:g}")) for b in BUDGETS)
        tokens = ", ".join(_tokens(n) for n in data["tokens_per_run"])
        lines.append(f"| {data['label']} | {len(data['seeds'])} | {cells} | {tokens} |")
        for b, entry in data["budgets"].items():
            params.setdefault(b, entry["total_params"]["mean"])
    lines += ["", "Parameters per budget: " + ", ".join(f"{b}: {p / 1e3:.0f}K" for b, p in params.items())]
    elastic = summary["methods"].get("elastic", {}).get("budgets", {})
    nests = [f"{b} in the next larger: " + ", ".join("yes" if v else "NO" for v in e["nests_in"])
             for b, e in elastic.items() if any(v is not None for v in e["nests_in"])]
    if nests:
        lines.append("Elastic run, per seed, whether each budget's architecture nests in the next larger budget's: "
                     + "; ".join(nests))
    lines.append("")
    lines += _gap_lines(summary)
    lines += _ablation_lines(summary)
    r = summary["token_ratios"]
    lines += ["", "Training tokens for all three sizes (T = parent pretraining, E = one elastic run):", "",
              "| route | tokens | vs elastic |", "|---|---|---|"]
    for key, label in (("elastic", "parent + one elastic run (T + E)"),
                       ("separately_T", "each size trained alone for T"),
                       ("separately_T_plus_E", "parent + smaller sizes trained alone for T + E"),
                       ("minitron", "parent + one prune-and-distil run per smaller size (T + 2E)")):
        n = r["total_tokens"][key]
        lines.append(f"| {label} | {_tokens(n)} | {n / r['total_tokens']['elastic']:.2f}x |")
    lines += ["", f"Beyond the parent: the elastic run {_tokens(r['E'])}, the smaller sizes trained alone "
              f"{_tokens(r['beyond_parent']['separately_T'])} ({r['beyond_parent_separately_over_elastic']:.2f}x), "
              f"Minitron-style {_tokens(r['beyond_parent']['minitron'])} "
              f"({r['beyond_parent_minitron_over_elastic']:.2f}x)."]
    if summary["missing"]:
        lines += ["", f"Missing (not finished): {', '.join(summary['missing'])}"]
    return "\n".join(lines) + "\n"


def _gap_lines(summary: dict[str, Any]) -> list[str]:
    if not summary["gaps"]:
        return []
    labels = dict(GAP_REFERENCES)
    lines = ["Elastic slice minus each model trained for that size (loss: positive = the slice is worse; accuracy: "
             "negative = the slice is worse), ± the spread of the difference over seeds:", "",
             "| budget | against | eval loss | accuracy |", "|---|---|---|---|"]
    for budget, refs in summary["gaps"].items():
        for ref, g in refs.items():
            loss, acc = g["loss"], g["accuracy"]
            lines.append(f"| {budget} | {labels[ref]} | {loss['gap']:+.4f} ± {loss['spread']:.4f} | "
                         f"{acc['gap'] * 100:+.1f} ± {acc['spread'] * 100:.1f} pts |")
    return [*lines, ""]


def _ablation_lines(summary: dict[str, Any]) -> list[str]:
    base = summary["rows"].get("elastic_s0")
    lines = ["Ablations (one seed, each a separate elastic run from parent 0; Δ against elastic seed 0):", "",
             "| ablation | " + " | ".join(f"budget {b:g}" for b in BUDGETS) + " | nests |",
             "|---|" + "---|" * len(BUDGETS) + "---|"]
    for name, info in summary["ablations"].items():
        label = name.removeprefix("ablation_")
        note = info["result"]["note"] if info["result"] else info["note"]  # as the row ran
        if info["unavailable"] or not info["result"]:
            lines.append(f"| {label} | " + " | ".join("-" for _ in BUDGETS) + f" | {note or 'not run'} |")
            continue
        cells = []
        for b in BUDGETS:
            got = info["result"]["budgets"][f"{b:g}"]
            ref = base["budgets"][f"{b:g}"] if base else None
            delta = (f" (Δ {got['loss'] - ref['loss']:+.4f} / {got['accuracy'] - ref['accuracy']:+.1%})"
                     if ref else "")
            cells.append(f"{got['loss']:.4f} / {got['accuracy']:.1%}{delta}")
        nests = ", ".join(f"{b}: {'yes' if v['nests_in'] else 'NO'}" for b, v in info["result"]["budgets"].items()
                          if "nests_in" in v)
        lines.append(f"| {label}: {note} | " + " | ".join(cells) + f" | {nests} |")
    if base:
        nests = ", ".join(f"{b}: {'yes' if v['nests_in'] else 'NO'}" for b, v in base["budgets"].items()
                          if "nests_in" in v)
        lines.append("| (elastic seed 0, the default) | " + " | ".join(
            f"{base['budgets'][f'{b:g}']['loss']:.4f} / {base['budgets'][f'{b:g}']['accuracy']:.1%}"
            for b in BUDGETS) + f" | {nests} |")
    return lines + ["", "nests: whether each budget's architecture lies inside the next larger budget's"]


def plots(summary: dict[str, Any], root: Path) -> list[Path]:
    """Loss and accuracy against total parameters, one series per method, error bars = spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for metric, ylabel in (("loss", "eval loss (held-out)"), ("accuracy", "reasoning accuracy")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for data in summary["methods"].values():
            points = sorted((e["total_params"]["mean"], e[metric]["mean"], e[metric]["spread"])
                            for e in data["budgets"].values() if e[metric]["mean"] is not None)
            if points:
                xs, ys, err = zip(*points)
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=data["label"])
        ax.set_xscale("log")
        ax.set_xlabel("total parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs parameters (benchmarks/reproduce.py, scale {summary['scale']})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = root / f"{metric}_vs_params.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


def write_report(root: Path, scale: Scale, rows: list[Row]) -> list[Path]:
    summary = aggregate(root, scale, rows)
    summary["ablation_settings"] = {name: what for name, (what, _, _) in ABLATIONS.items()}
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    (root / "results.md").write_text(markdown(summary))
    return [root / "results.json", root / "results.md", *plots(summary, root)]

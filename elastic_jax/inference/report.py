"""`elastic-jax report`: standard against elastic budget control over budgets, ordered pairs and thinking caps,
written as results.json, a Markdown table (results.md) and an accuracy-vs-latency plot with the Pareto front."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from elastic_jax.elastic.accounting import format_count
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.evaluate import (
    evaluate_settings,
    headline,
    held_out_problems,
    pareto_front,
    router_choices,
    settings_grid,
)

AXIS_COLUMNS = ("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn", "depth")


def build_report(engine: Engine, *, budgets: Sequence[float] | None = None, caps: Sequence[int] = (8, 16, 32),
                 problems: int = 64, batch_size: int = 16, max_answer: int = 8, repeats: int = 3,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every budget alone and every ordered pair, at every cap, on `problems` held-out problems; each batch's latency
    is the fastest of `repeats` timed passes."""
    budgets = list(engine.budgets if budgets is None else budgets)
    settings = settings_grid(budgets, caps)
    examples = held_out_problems(engine, problems)
    rows = evaluate_settings(engine, settings, examples, batch_size=batch_size, max_answer=max_answer,
                             repeats=repeats, progress=progress)
    for row, best in zip(rows, pareto_front(rows)):
        row["pareto"] = best
    return {"settings": rows, "headline": headline(rows), "router": router_choices(engine, budgets),
            "problems": problems, "batch_size": rows[0]["batch_size"], "max_answer": max_answer, "caps": list(caps),
            "timed_passes": repeats,
            "compilations": engine.compilations}


def headline_sentences(head: dict[str, Any]) -> list[str]:
    """The two figures the paper reports, in words (or why there is none)."""
    out = []
    gain, ratio = head["accuracy_gain"], head["latency_ratio"]
    if gain:
        worse = (" (negative: within every latency, the best elastic setting is less accurate than the best "
                 "standard one)" if gain["value"] < 0 else "")
        out.append(f"Best accuracy gain of elastic over standard budget control at equal or lower latency: "
                   f"{gain['value'] * 100:+.1f} points ({gain['elastic']} vs {gain['standard']}){worse}.")
    else:
        out.append("No elastic setting was as fast as a standard one: no accuracy gain at equal or lower latency.")
    if ratio:
        speed = (f"{ratio['value']:.2f}x lower latency" if ratio["value"] >= 1 else
                 f"{ratio['value']:.2f}x, i.e. {1 / ratio['value']:.2f}x higher latency: at every accuracy a standard "
                 f"setting reaches, the fastest elastic setting reaching it is slower")
        out.append(f"Best latency ratio (standard / elastic) at equal or higher accuracy: {speed} "
                   f"({ratio['elastic']} vs {ratio['standard']}).")
    else:
        out.append("No elastic setting was as accurate as a standard one that answers anything: no latency ratio at "
                   "equal or higher accuracy.")
    return out


def markdown(report: dict[str, Any]) -> str:
    """The settings table, the headline and the router's choices as Markdown."""
    lines = [f"Held-out problems: {report['problems']}; batch size {report['batch_size']}; latency = wall time per "
             f"request after compilation (fastest of {report.get('timed_passes', 1)} timed passes); answers capped "
             f"at {report['max_answer']} tokens.", "",
             *headline_sentences(report["headline"]), "",
             "| setting | kind | accuracy | latency (ms) | tokens / request | think tokens | forced </think> | "
             "Pareto |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["settings"], key=lambda r: r["latency_s"]):
        lines.append(f"| {r['label']} | {r['kind']} | {r['accuracy']:.3f} | {r['latency_s'] * 1e3:.1f} | "
                     f"{r['tokens_per_request']:.1f} | {r['think_tokens']:.1f} | {r['forced_share']:.2f} | "
                     f"{'*' if r['pareto'] else ''} |")
    lines += ["", "What the router keeps of each axis (fraction of the parent):", "",
              "| budget | trained | achieved | total | active | " + " | ".join(AXIS_COLUMNS) + " |",
              "|---" * (5 + len(AXIS_COLUMNS)) + "|"]
    for r in report["router"]:
        axes = " | ".join("-" if r[a] is None else f"{r[a]:.2f}" for a in AXIS_COLUMNS)
        lines.append(f"| {r['budget']:g} | {'yes' if r['trained'] else 'no'} | {r['achieved']:.3f} | "
                     f"{format_count(r['total_params'])} | {format_count(r['active_params'])} | {axes} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy against latency per request, standard and elastic settings, the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("standard", "o"), ("elastic", "^")):
        pts = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["latency_s"] * 1e3 for r in pts], [r["accuracy"] for r in pts], marker=marker, label=kind)
        for r in pts:
            ax.annotate(r["label"], (r["latency_s"] * 1e3, r["accuracy"]), fontsize=6, alpha=0.7)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_s"])
    ax.plot([r["latency_s"] * 1e3 for r in front], [r["accuracy"] for r in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel(f"latency per request (ms, batch {report['batch_size']})")
    ax.set_ylabel(f"accuracy ({report['problems']} held-out problems)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """results.json, results.md and accuracy_latency.png in `out` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "accuracy_latency.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(markdown(report))
    plot(report, paths["plot"])
    return paths

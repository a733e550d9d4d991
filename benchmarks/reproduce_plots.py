"""The curves of "Is nesting worth it?": eval loss and accuracy against tokens beyond the parent, one panel per
budget, the elastic run and Minitron-style compression with the spread over seeds as error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _panel(ax, summary: dict[str, Any], budget: str, metric: str) -> None:
    curves = summary["curves"]
    for kind, label in (("elastic", "elastic (one run)"), ("minitron", "Minitron-style (two runs)")):
        points = [e for e in curves[kind].get(budget, []) if e[metric]["n"]]
        if points:
            ax.errorbar([e["tokens"] for e in points], [e[metric]["mean"] for e in points],
                        yerr=[e[metric]["spread"] for e in points], marker="o", capsize=3, label=label)
    parent = summary["parent"]
    if parent:
        ax.axhline(parent[metric], color="grey", linestyle=":", label="the parent")
    twin = summary["parent_check"]["budgets"].get(budget)
    if twin:
        ax.axhline(twin[metric]["mean"], color="black", linestyle="--", label="trained alone, T + E")
    ax.set_xscale("log")
    ax.set_title(f"budget {budget}", fontsize=9)
    ax.set_xlabel("tokens beyond the parent")
    ax.grid(True, alpha=0.3)


def plots(summary: dict[str, Any], root: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for metric, ylabel in (("loss", "eval loss (held-out)"), ("accuracy", "reasoning accuracy")):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=metric == "accuracy")
        for ax, budget in zip(axes, ("1", "0.7", "0.4")):
            _panel(ax, summary, budget, metric)
        axes[0].set_ylabel(ylabel)
        axes[-1].legend(fontsize=7)
        fig.suptitle(f"{ylabel} against tokens (benchmarks/reproduce.py, scale {summary['scale']})", fontsize=10)
        fig.tight_layout()
        path = root / f"{metric}_vs_tokens.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out

"""docs/results.md's budget-control section, rendered from a report's results.json (`elastic-jax report`).

    python -m elastic_jax.inference.report_docs runs/bc/report/results.json

copies the JSON to docs/results_budget_control.json, redraws docs/results_accuracy_latency.png from it and rewrites
the text between the section's markers; tests re-render it from the copied JSON and fail on any difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from elastic_jax.inference.report import markdown, plot

BEGIN = "<!-- budget-control:begin (rendered by elastic_jax/inference/report_docs.py; do not edit by hand) -->"
END = "<!-- budget-control:end -->"
DOCS = Path(__file__).resolve().parents[2] / "docs"
JSON_NAME = "results_budget_control.json"
PLOT_NAME = "results_accuracy_latency.png"
TRAINING = ("elastic-jax pretrain --config configs/reasoning_sum.py --workdir runs/bc/parent\n"
            "elastic-jax elastify --config configs/reasoning_sum_elastic.py --parent runs/bc/parent/checkpoints "
            "--workdir runs/bc/elastic")


def _task_sentence(task: dict[str, Any]) -> str:
    if task.get("answer") != "sum":
        return (f"The task (`data.reasoning` = {json.dumps(task, sort_keys=True)}) answers with the trace's last "
                f"result, which every answering model copies: a larger answering model cannot help there.")
    return (f"The task is \"chain_sum\": {task['min_steps']}-{task['max_steps']} additions/subtractions of digits "
            f"mod {task['modulus']}, each written in the `<think>` trace (`7+5=2;2-3=9;9+4=3`), and the answer is the "
            f"sum of the step results (here 14), an operation the trace never shows: the answering model computes it "
            f"from the thoughts it reads, so its size can matter. (On the \"chain\" preset the answer is the trace's "
            f"last result, which every answering budget copies: a larger answering model cannot help there.)")


def size_sentence(report: dict[str, Any]) -> str:
    """The property the task was built for, from the same-thoughts measurement: full against smallest answerer, with
    the standard error of the difference (paired over the same problems when the JSON has per-problem hits)."""
    same = report["same_thoughts"]
    by_budget = {r["answer_budget"]: r for r in same["answers"]}
    big, small = by_budget[max(by_budget)], by_budget[min(by_budget)]
    n = same["problems"]
    gap = (big["accuracy"] - small["accuracy"]) * 100
    noise = 100 * math.sqrt(sum(r["accuracy"] * (1 - r["accuracy"]) for r in (big, small)) / n)
    if "hits" in big and "hits" in small:  # paired (same problems, same thoughts): only the problems they split count
        only_big = sum(a == "1" and b == "0" for a, b in zip(big["hits"], small["hits"]))
        only_small = sum(a == "0" and b == "1" for a, b in zip(big["hits"], small["hits"]))
        noise = 100 * math.sqrt(max(only_big + only_small - (only_big - only_small) ** 2 / n, 0.0)) / n
    verdict = "answers better" if gap > 0 else "does not answer better" if gap == 0 else "answers worse"
    within = (f"within two standard errors of the difference ({2 * noise:.1f} points): not a measured size effect"
              if abs(gap) < 2 * noise else f"beyond two standard errors of the difference ({2 * noise:.1f} points)")
    best = max(same["answers"], key=lambda r: (r["accuracy"], -r["answer_budget"]))
    return (f"From the same thoughts (budget {same['think_budget']:g} thinking, cap {same['max_think']}; "
            f"{same['exact_traces']} of {n} traces exact), the full budget {verdict} than the smallest: "
            f"{big['correct']} / {n} ({big['accuracy']:.1%}) against {small['correct']} / {n} "
            f"({small['accuracy']:.1%}) for budget {small['answer_budget']:g}, {gap:+.1f} points, {within}. "
            f"The most accurate answering budget is {best['answer_budget']:g} ({best['correct']} / {n}). "
            f"Answers equal to what the thoughts imply, right or wrong: {big['answers_implied']} / {n} (full) "
            f"against {small['answers_implied']} / {n} (smallest).")


def render_section(report: dict[str, Any]) -> str:
    """The whole marked section, markers included."""
    command = report.get("command", "elastic-jax report --checkpoint <elastic checkpoints> --out <report dir>")
    words = command.split()
    out = words[words.index("--out") + 1] if "--out" in words[:-1] else "<report dir>"
    lines = [BEGIN, "", "## Budget control where answering needs size", "",
             _task_sentence(report.get("task") or {}), "", "Trained and measured with:", "", "```",
             TRAINING, command, f"python -m elastic_jax.inference.report_docs {out}/results.json", "```", "",
             size_sentence(report), "", f"![accuracy vs latency]({PLOT_NAME})", "", markdown(report).rstrip("\n"), "",
             END]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its marked section replaced by `section` (one clear error when the markers are missing)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"docs/results.md has no budget-control section: expected the lines {BEGIN!r} and {END!r}")
    return text[:start] + section + text[end + len(END) + 1:]


def current_section(text: str) -> str:
    """The marked section as it stands in `text`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"docs/results.md has no budget-control section: expected the lines {BEGIN!r} and {END!r}")
    return text[start:end + len(END) + 1]


def render_docs(results_json: str | Path, docs: Path = DOCS) -> Path:
    """Copy the report's JSON into `docs`, redraw the plot from it and rewrite results.md's section."""
    report = json.loads(Path(results_json).read_text())
    (docs / JSON_NAME).write_text(json.dumps(report, indent=1))
    plot(report, docs / PLOT_NAME)
    page = docs / "results.md"
    page.write_text(replace_section(page.read_text(), render_section(report)))
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_json", help="results.json written by `elastic-jax report`")
    args = parser.parse_args(argv)
    print(f"rendered {render_docs(args.results_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

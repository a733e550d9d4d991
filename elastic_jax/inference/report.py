"""`elastic-jax report`: standard against elastic budget control over budgets, ordered pairs and thinking caps,
written as results.json, a Markdown table (results.md) and an accuracy-vs-latency plot with the Pareto front."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from elastic_jax.data import ReasoningExample, ReasoningTaskConfig, encode_prompt, score_answer
from elastic_jax.data.reasoning import answer_of_trace
from elastic_jax.elastic.accounting import format_count
from elastic_jax.inference.budget_control import check_control, same_thoughts
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.evaluate import (
    evaluate_setting,
    headline,
    held_out_problems,
    pareto_front,
    router_choices,
    settings_grid,
)
from elastic_jax.inference.idle import LoadMonitor, LoadWindow

AXIS_COLUMNS = ("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn", "depth")


def build_report(engine: Engine, *, budgets: Sequence[float] | None = None, caps: Sequence[int] = (8, 16, 32),
                 problems: int = 64, batch_size: int = 16, max_answer: int = 8, repeats: int = 3,
                 monitor: LoadMonitor | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every budget alone and every ordered pair, at every cap, on `problems` held-out problems; each batch's latency
    is the fastest of `repeats` timed passes. `monitor` measures other processes' load before and during the timing
    and refuses a busy machine (its record goes into the report); then the largest budget thinks once at the largest
    cap and every budget answers from those same thoughts."""
    budgets = list(engine.budgets if budgets is None else budgets)
    monitor = monitor or LoadMonitor()
    settings = settings_grid(budgets, caps)
    examples = held_out_problems(engine, problems)
    prompts = [encode_prompt(p, engine.tokenizer) for p in examples]
    for s in settings:  # every setting's errors before the first one runs
        check_control(engine, prompts, s.think_budget, s.answer_budget, s.max_think, max_answer)
    monitor.quiet_check()
    rows = []
    for n, s in enumerate(settings, 1):
        window = LoadWindow().start()
        rows.append(evaluate_setting(engine, s, examples, batch_size=batch_size, max_answer=max_answer,
                                     repeats=repeats))
        rows[-1]["other_load"] = window.stop()
        monitor.timed(rows[-1]["other_load"], s.label)
        if progress:
            r = rows[-1]
            progress(f"[{n}/{len(settings)}] {r['label']}: accuracy {r['accuracy']:.3f}, {r['latency_s'] * 1e3:.1f} "
                     f"ms per request at batch {r['batch_size']} (other processes' load {r['other_load']:.2f})")
    for row, best in zip(rows, pareto_front(rows)):
        row["pareto"] = best
    return {"settings": rows, "headline": headline(rows), "router": router_choices(engine, budgets),
            "problems": problems, "batch_size": rows[0]["batch_size"], "max_answer": max_answer, "caps": list(caps),
            "timed_passes": repeats, "load": monitor.record(), "task": _task(engine),
            "same_thoughts": same_thoughts_rows(engine, examples, max(budgets), budgets, max(caps), batch_size,
                                                max_answer),
            "compilations": engine.compilations}


def same_thoughts_rows(engine: Engine, examples: Sequence[ReasoningExample], think_budget: float,
                       answer_budgets: Sequence[float], max_think: int, batch_size: int,
                       max_answer: int) -> dict[str, Any]:
    """`think_budget` thinks once per problem; each answering budget's accuracy from exactly those thoughts, and how
    often its answer is the one the thoughts imply (right or wrong: what the answering phase alone gets right)."""
    tok = engine.tokenizer
    task = ReasoningTaskConfig.from_dict(_task(engine))
    correct: dict[float, list[bool]] = {float(b): [] for b in answer_budgets}
    faithful: dict[float, list[bool]] = {float(b): [] for b in answer_budgets}
    exact: list[bool] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        results = same_thoughts(engine, [encode_prompt(e, tok) for e in chunk], think_budget, answer_budgets,
                                max_think, max_answer)
        first = next(iter(results.values()))
        exact += [t == tok.encode(e.trace) + [tok.end_think_id] for t, e in zip(first.thoughts, chunk)]
        implied = [answer_of_trace(tok.decode(t, skip_special=True), task) for t in first.thoughts]
        for b, result in results.items():
            correct[b] += [score_answer(result.generated(j), e, tok) for j, e in enumerate(chunk)]
            faithful[b] += [want is not None and score_answer(result.generated(j), dataclasses.replace(e, answer=want),
                                                              tok) for j, (e, want) in enumerate(zip(chunk, implied))]
    rows = [{"answer_budget": b, "accuracy": sum(hits) / len(hits), "correct": sum(hits),
             "answers_implied": sum(faithful[b]), "implied_share": sum(faithful[b]) / len(hits),
             "hits": "".join("1" if h else "0" for h in hits)}  # per problem, for paired comparisons
            for b, hits in correct.items()]
    return {"think_budget": float(think_budget), "max_think": max_think, "problems": len(examples),
            "exact_traces": sum(exact), "answers": rows}


def _task(engine: Engine) -> dict[str, Any]:
    """The reasoning task's section of the checkpoint's experiment config."""
    return dict((((engine.meta.get("experiment") or {}).get("data") or {}).get("reasoning")) or {})


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


def load_sentence(report: dict[str, Any]) -> str:
    """Whether the latencies are a result: the load other processes put on the machine before and during timing."""
    load = report.get("load")
    if not load:
        return "Latencies: the machine's load was not recorded for this run; they are not a timing result."
    seen = (f"other processes used {load['other_load_before']:.2f} cores before timing and at most "
            f"{load['other_load_during_max']:.2f} (mean {load['other_load_during_mean']:.2f}) while timing, on "
            f"{load['cores']} cores (1-minute load average {load['loadavg_1min_before']:.2f} before)")
    if load["timing_result"]:
        return f"Latencies were measured on an idle machine: {seen}, below the threshold of {load['max_load']:g}."
    return (f"**The latencies are not a timing result**: {seen}, at or above the threshold of {load['max_load']:g} "
            f"(run with --allow-busy). Only the accuracy figures count.")


def same_thoughts_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: every budget answering from the same thoughts."""
    same = report.get("same_thoughts")
    if not same:
        return []
    lines = [f"Answering from the same thoughts: budget {same['think_budget']:g} thinks once per problem (cap "
             f"{same['max_think']}; {same['exact_traces']} of {same['problems']} traces are exactly the reference "
             f"trace), then each budget answers from that text. \"Implied\" counts answers equal to what the thoughts "
             f"read imply (right or wrong): the answering phase's own accuracy.", "",
             "| answering budget | accuracy | correct | implied by the thoughts |", "|---|---|---|---|"]
    for r in same["answers"]:
        lines.append(f"| {r['answer_budget']:g} | {r['accuracy']:.3f} | {r['correct']} / {same['problems']} | "
                     f"{r['answers_implied']} / {same['problems']} ({r['implied_share']:.3f}) |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The settings table, the headline, the load, the same-thoughts table and the router's choices as Markdown."""
    lines = [f"Held-out problems: {report['problems']}; batch size {report['batch_size']}; latency = wall time per "
             f"request after compilation (fastest of {report.get('timed_passes', 1)} timed passes); answers capped "
             f"at {report['max_answer']} tokens.", "", load_sentence(report), "",
             *headline_sentences(report["headline"]), "",
             "| setting | kind | accuracy | latency (ms) | tokens / request | think tokens | forced </think> | "
             "Pareto |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["settings"], key=lambda r: r["latency_s"]):
        lines.append(f"| {r['label']} | {r['kind']} | {r['accuracy']:.3f} | {r['latency_s'] * 1e3:.1f} | "
                     f"{r['tokens_per_request']:.1f} | {r['think_tokens']:.1f} | {r['forced_share']:.2f} | "
                     f"{'*' if r['pareto'] else ''} |")
    same = same_thoughts_table(report)
    lines += ["", *same, *([""] if same else []), "What the router keeps of each axis (fraction of the parent):", "",
              "| budget | trained | achieved | total | active | " + " | ".join(AXIS_COLUMNS) + " |",
              "|---" * (5 + len(AXIS_COLUMNS)) + "|"]
    for r in report["router"]:
        axes = " | ".join("-" if r[a] is None else f"{r[a]:.2f}" for a in AXIS_COLUMNS)
        lines.append(f"| {r['budget']:g} | {'yes' if r['trained'] else 'no'} | {r['achieved']:.3f} | "
                     f"{format_count(r['total_params'])} | {format_count(r['active_params'])} | {axes} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy against latency per request: standard and elastic settings, each kind's own Pareto front as its
    curve (the best accuracy that kind reaches within each latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker, color in (("standard", "o", "C0"), ("elastic", "^", "C1")):
        pts = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["latency_s"] * 1e3 for r in pts], [r["accuracy"] for r in pts], marker=marker, color=color,
                   alpha=0.6, label=kind)
        for r in pts:
            ax.annotate(r["label"], (r["latency_s"] * 1e3, r["accuracy"]), fontsize=6, alpha=0.7)
        front = sorted((r for r, best in zip(pts, pareto_front(pts)) if best), key=lambda r: r["latency_s"])
        ax.step([r["latency_s"] * 1e3 for r in front], [r["accuracy"] for r in front], where="post", color=color,
                lw=1.5, label=f"{kind}: best within latency")
    ax.set_xlabel(f"latency per request (ms, batch {report['batch_size']})")
    ax.set_ylabel(f"accuracy ({report['problems']} held-out problems)")
    if report.get("load") and not report["load"]["timing_result"]:
        ax.set_title("latencies NOT a timing result (busy machine)", color="red", fontsize=9)
    ax.legend(fontsize=7)
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

"""Accuracy and latency of budget-control settings on held-out reasoning problems, from one elastic checkpoint.

A setting is (thinking budget, answering budget, thinking cap): equal budgets are standard budget control, different
ones elastic budget control. Each setting runs every problem in batches of `batch_size` prompts: the first pass
compiles whatever it needs and gives the answers (greedy, so every pass agrees), then `repeats` timed passes follow
and each batch keeps its fastest (on a shared machine the minimum is the least disturbed by other work). Latency per
request is the wall time of the batch that carries it, so it is stated with the batch size.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from elastic_jax.data import ReasoningExample, ReasoningTaskConfig, encode_prompt, eval_prompts, score_answer
from elastic_jax.elastic.spec import AXES, WIDTH_FIELDS, Budget
from elastic_jax.inference.budget_control import check_control, run_budget_control
from elastic_jax.inference.engine import Engine
from elastic_jax.model.functional import InputError


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way of serving a reasoning request."""

    think_budget: float
    answer_budget: float
    max_think: int

    @property
    def kind(self) -> str:
        return "standard" if self.think_budget == self.answer_budget else "elastic"

    @property
    def label(self) -> str:
        pair = f"{self.think_budget:g}" if self.kind == "standard" else f"{self.think_budget:g}->{self.answer_budget:g}"
        return f"{pair} cap {self.max_think}"


def settings_grid(budgets: Sequence[float], caps: Sequence[int], pairs: bool = True) -> list[Setting]:
    """Every budget alone, and (with `pairs`) every ordered pair of different budgets, each at every cap."""
    combos = [(b, b) for b in budgets]
    if pairs:
        combos += [(a, b) for a, b in itertools.permutations(budgets, 2)]
    return [Setting(float(a), float(b), int(c)) for a, b in combos for c in caps]


def held_out_problems(engine: Engine, count: int) -> list[ReasoningExample]:
    """The first `count` problems of the eval split of the task the checkpoint was trained on (its metadata)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"problems must be an integer >= 1, got {count!r}")
    section = (((engine.meta.get("experiment") or {}).get("data") or {}).get("reasoning")) or {}
    return eval_prompts(count, ReasoningTaskConfig.from_dict(section))


def evaluate_setting(engine: Engine, setting: Setting, problems: Sequence[ReasoningExample], *, batch_size: int = 16,
                     max_answer: int = 8, repeats: int = 1) -> dict[str, Any]:
    """Accuracy, latency per request (fastest of `repeats` passes after the compiling one) and tokens generated."""
    tok = engine.tokenizer
    prompts = [encode_prompt(p, tok) for p in problems]
    capacity = check_control(engine, prompts, setting.think_budget, setting.answer_budget, setting.max_think,
                             max_answer)
    batch_size = max(1, min(batch_size, len(prompts)))
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]

    def run(rows: list[int]):
        padded = rows + [rows[-1]] * (batch_size - len(rows))  # one batch shape: one set of programs
        return run_budget_control(engine, [prompts[i] for i in padded], setting.think_budget, setting.answer_budget,
                                  setting.max_think, max_answer, capacity=capacity)

    results = [run(rows) for rows in batches]
    compiled = engine.compilations
    seconds = [float("inf")] * len(batches)
    for _ in range(repeats):
        for b, rows in enumerate(batches):
            start = time.perf_counter()
            run(rows)
            seconds[b] = min(seconds[b], time.perf_counter() - start)
    correct, generated, thoughts, forced = [], [], [], []
    for rows, result in zip(batches, results):
        for j, i in enumerate(rows):
            correct.append(score_answer(result.generated(j), problems[i], tok))
            generated.append(result.tokens_generated[j])
            thoughts.append(len(result.thoughts[j]))
            forced.append(result.forced[j])
    return {"label": setting.label, "kind": setting.kind, "think_budget": setting.think_budget,
            "answer_budget": setting.answer_budget, "max_think": setting.max_think, "problems": len(problems),
            "accuracy": float(np.mean(correct)), "latency_s": float(np.mean(seconds)), "batch_size": batch_size,
            "tokens_per_request": float(np.mean(generated)), "think_tokens": float(np.mean(thoughts)),
            "forced_share": float(np.mean(forced)), "compiled_while_timed": engine.compilations - compiled,
            "timed_passes": repeats}


def evaluate_settings(engine: Engine, settings: Sequence[Setting], problems: Sequence[ReasoningExample], *,
                      batch_size: int = 16, max_answer: int = 8, repeats: int = 1,
                      progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """evaluate_setting for each setting (every setting's errors are raised before the first one runs)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats (timed passes per setting) must be an integer >= 1, got {repeats!r}")
    prompts = [encode_prompt(p, engine.tokenizer) for p in problems]
    for s in settings:
        check_control(engine, prompts, s.think_budget, s.answer_budget, s.max_think, max_answer)
    rows = []
    for n, s in enumerate(settings, 1):
        rows.append(evaluate_setting(engine, s, problems, batch_size=batch_size, max_answer=max_answer,
                                     repeats=repeats))
        if progress:
            r = rows[-1]
            progress(f"[{n}/{len(settings)}] {r['label']}: accuracy {r['accuracy']:.3f}, "
                     f"{r['latency_s'] * 1e3:.1f} ms per request at batch {r['batch_size']}")
    return rows


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """True for each row no other row beats (lower or equal latency and higher or equal accuracy, one strictly)."""
    def beaten(r):
        return any(o["latency_s"] <= r["latency_s"] and o["accuracy"] >= r["accuracy"]
                   and (o["latency_s"] < r["latency_s"] or o["accuracy"] > r["accuracy"]) for o in rows)
    return [not beaten(r) for r in rows]


def _best_within(rows: Sequence[dict[str, Any]], latency: float) -> dict[str, Any] | None:
    """The most accurate of `rows` at latency <= `latency` (the faster one on a tie); None when none is."""
    fast = [r for r in rows if r["latency_s"] <= latency]
    return max(fast, key=lambda r: (r["accuracy"], -r["latency_s"])) if fast else None


def _fastest_reaching(rows: Sequence[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The fastest of `rows` with accuracy >= `accuracy`; None when none is."""
    good = [r for r in rows if r["accuracy"] >= accuracy]
    return min(good, key=lambda r: r["latency_s"]) if good else None


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """As the paper states it, comparing the two accuracy-latency curves: the best accuracy gain of elastic over
    standard budget control at equal or lower latency, and the best latency ratio (standard / elastic) at equal or
    higher accuracy, with the settings compared.

    Gain: at each setting's latency T, the best elastic accuracy within T minus the best standard accuracy within T
    (each side's best option under that latency budget, not any slower standard setting). Ratio: at each accuracy A
    reached by a standard setting, the fastest standard setting reaching A over the fastest elastic one; only A > 0
    counts (a cap too short to think gives 0 for every budget: matching that is no trade-off). Either figure can
    come out unfavourable (a negative gain, a ratio below 1): it is the best there is, and is stated as such."""
    std = [r for r in rows if r["kind"] == "standard"]
    ela = [r for r in rows if r["kind"] == "elastic"]
    gains, ratios = [], []
    for t in sorted({r["latency_s"] for r in rows}):
        e, s = _best_within(ela, t), _best_within(std, t)
        if e is not None and s is not None:
            gains.append((e["accuracy"] - s["accuracy"], e, s))
    for a in sorted({r["accuracy"] for r in std if r["accuracy"] > 0}):
        e, s = _fastest_reaching(ela, a), _fastest_reaching(std, a)
        if e is not None:
            ratios.append((s["latency_s"] / e["latency_s"], e, s))
    out: dict[str, Any] = {"accuracy_gain": None, "latency_ratio": None}
    if gains:
        g, e, s = max(gains, key=lambda x: x[0])
        out["accuracy_gain"] = {"value": g, "elastic": e["label"], "standard": s["label"]}
    if ratios:
        q, e, s = max(ratios, key=lambda x: x[0])
        out["latency_ratio"] = {"value": q, "elastic": e["label"], "standard": s["label"]}
    return out


def router_choices(engine: Engine, budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Per budget: what the router kept of each axis (as a fraction of the parent), target vs achieved size."""
    cfg = engine.cfg
    rows = []
    for b in budgets:
        arch = engine.arch(b)
        spec, sub = arch.spec, arch.cfg
        row: dict[str, Any] = {"budget": b, "trained": arch.trained, "metric": engine.router_config.metric,
                               "achieved": arch.achieved}
        for axis in AXES:
            if axis == "hidden":
                row[axis] = spec.hidden(cfg) / cfg.hidden_size
            elif axis == "depth":
                row[axis] = len(spec.kept_layers(cfg)) / cfg.num_layers
            else:
                field = next(f for f, (a, _) in WIDTH_FIELDS.items() if a == axis)
                layers = [i for i, c in enumerate(cfg.pattern) if c == WIDTH_FIELDS[field][1]]
                row[axis] = (float(np.mean([spec.width(cfg, field, i) / cfg.width(field, i) for i in layers]))
                             if layers else None)
        row["total_params"], row["active_params"] = (Budget(1.0, "total_params").measure(sub),
                                                     Budget(1.0, "active_params").measure(sub))
        rows.append(row)
    return rows

"""Budget control for reasoning requests (`prompt <think> thoughts </think> answer <eos>`).

Standard budget control: one budget thinks for at most `max_think` tokens; a row that has not closed its thoughts
by then gets `</think>` forced, and the same model (same caches) writes the answer.
Elastic budget control: budget A thinks (same cap); budget B prefills prompt + thoughts + `</think>` into fresh
caches of its own (caches are recomputed at the switch: a nested model cannot reuse another's) and answers.
Both run a whole batch of prompts of different lengths exactly (see programs.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from elastic_jax.inference.engine import CAPACITY_MULTIPLE, Engine
from elastic_jax.model.functional import InputError


@dataclasses.dataclass(frozen=True)
class ControlResult:
    """Per prompt: the thoughts (ending with `</think>` when the model closed them itself), whether `</think>` was
    forced, and the answer tokens (ending with eos when the model finished)."""

    thoughts: list[list[int]]
    forced: list[bool]
    answers: list[list[int]]
    end_think_id: int

    def generated(self, row: int) -> list[int]:
        """Everything after the prompt, as the text reads: thoughts, `</think>`, answer."""
        return self.thoughts[row] + ([self.end_think_id] if self.forced[row] else []) + self.answers[row]

    @property
    def tokens_generated(self) -> list[int]:
        """Tokens each request produced (a forced `</think>` counts: it is fed like any other)."""
        return [len(t) + int(f) + len(a) for t, f, a in zip(self.thoughts, self.forced, self.answers)]


def check_control(engine: Engine, prompts: Sequence[Sequence[int]], think_budget: float, answer_budget: float,
                  max_think: int, max_answer: int) -> int:
    """Every user error of a budget-control request, before anything compiles; returns the cache capacity."""
    for name, value in (("max_think (the thinking cap)", max_think), ("max_answer", max_answer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1 (tokens), got {value!r}")
    engine.arch(think_budget)
    engine.arch(answer_budget)
    engine.tokenizer.end_think_id  # noqa: B018  (raises when the tokenizer has no </think>)
    return engine.check_request(prompts, max_think + 1 + max_answer)


def run_budget_control(engine: Engine, prompts: Sequence[Sequence[int]], think_budget: float,
                       answer_budget: float | None = None, max_think: int = 64, max_answer: int = 16, *,
                       capacity: int | None = None, temperature: float = 0.0, seed: int = 0) -> ControlResult:
    """Think with `think_budget` (at most `max_think` tokens), answer with `answer_budget` (default: the same,
    which is standard budget control: one model, one set of caches)."""
    answer_budget = think_budget if answer_budget is None else answer_budget
    needed = check_control(engine, prompts, think_budget, answer_budget, max_think, max_answer)
    capacity = needed if capacity is None else max(capacity, needed)
    capacity = -(-capacity // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
    eos, end_think = engine.cfg.eos_token_id, engine.tokenizer.end_think_id
    batch = engine.start(think_budget, prompts, capacity, seed)
    thoughts = engine.decode(batch, max_think, stop_ids=(end_think, eos), temperature=temperature)
    finished = [bool(t) and t[-1] == eos for t in thoughts]  # ended without an answer
    forced = [not f and not (t and t[-1] == end_think) for t, f in zip(thoughts, finished)]
    closing = [[end_think] if f else [] for f in forced]
    if engine.arch(answer_budget).spec == engine.arch(think_budget).spec:
        engine.feed(batch, closing)  # standard: the same caches go on
        answers = engine.decode(batch, max_answer, stop_ids=(eos,), temperature=temperature, done=finished)
    else:  # elastic: the answering model reads prompt + thoughts into caches of its own
        answers = answer_from_thoughts(engine, prompts, ControlResult(thoughts, forced, [], end_think), answer_budget,
                                       max_answer, capacity=capacity, temperature=temperature, seed=seed + 1)
    return ControlResult(thoughts, forced, answers, end_think)


def answer_from_thoughts(engine: Engine, prompts: Sequence[Sequence[int]], thought: ControlResult,
                         answer_budget: float, max_answer: int, *, capacity: int, temperature: float = 0.0,
                         seed: int = 0) -> list[list[int]]:
    """`answer_budget` prefills prompt + `thought`'s thoughts (+ a forced `</think>`) into fresh caches and answers;
    rows whose thoughts ended with eos get no answer. Any thoughts will do: several budgets can answer the same."""
    eos = engine.cfg.eos_token_id
    finished = [bool(t) and t[-1] == eos for t in thought.thoughts]
    texts = [list(p) + t + ([thought.end_think_id] if f else []) for p, t, f in
             zip(prompts, thought.thoughts, thought.forced)]
    batch = engine.start(answer_budget, texts, capacity, seed)
    return engine.decode(batch, max_answer, stop_ids=(eos,), temperature=temperature, done=finished)


def same_thoughts(engine: Engine, prompts: Sequence[Sequence[int]], think_budget: float,
                  answer_budgets: Sequence[float], max_think: int = 64, max_answer: int = 16,
                  *, seed: int = 0) -> dict[float, ControlResult]:
    """`think_budget` thinks once (greedy); each of `answer_budgets` answers from exactly those thoughts. Isolates
    what the answering model's size is worth (every answer reads the same text)."""
    capacity = max(check_control(engine, prompts, think_budget, b, max_think, max_answer) for b in answer_budgets)
    capacity = -(-capacity // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
    own = run_budget_control(engine, prompts, think_budget, think_budget, max_think, max_answer, capacity=capacity,
                             seed=seed)
    return {float(b): own if engine.arch(b).spec == engine.arch(think_budget).spec else
            ControlResult(own.thoughts, own.forced, answer_from_thoughts(engine, prompts, own, b, max_answer,
                                                                         capacity=capacity, seed=seed + 1),
                          own.end_think_id) for b in answer_budgets}

"""A synthetic multi-step arithmetic task with visible reasoning, deterministic by seed and random-access.

A sample is `prompt <think> trace </think> answer <eos>`, e.g.

    ((7+5)*3)-4=<think>7+5=12;12*3=36;36-4=32</think>32

Every step is `(left op operand) mod modulus`, so answers stay short at any depth. The answer is the last step's
result, or (`answer="sum"`, the "chain_sum" preset) the sum of every step's result, which the trace never shows.
The number of steps, the operand range, the op set and the modulus are the difficulty knobs. The train/eval split
is decided by a hash of the prompt text alone, so the two splits can never share a problem (for any seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elastic_jax import schema
from elastic_jax.data.tokenizer import END_THINK, THINK, ByteTokenizer, Tokenizer

SPLITS = ("train", "eval")
OPS = "+-*"
_MAX_ATTEMPTS = 10_000
_ANSWER = re.compile(r"\s*(\d+)\s*$")

PRESETS: dict[str, dict[str, Any]] = {
    # 1-2 steps over single digits: learnable by a ~1M-parameter model in a few hundred steps.
    "easy": dict(min_steps=1, max_steps=2, max_operand=9, ops="+-*", modulus=100),
    "medium": dict(min_steps=2, max_steps=4, max_operand=20, ops="+-*", modulus=100),
    "hard": dict(min_steps=3, max_steps=8, max_operand=99, ops="+-*", modulus=1000),
    # 4-8 additions/subtractions mod 10: each step is a small lookup, but the answer composes all of them, so a
    # small model needs the trace (configs/reasoning.py: thinking length changes accuracy).
    "chain": dict(min_steps=4, max_steps=8, max_operand=9, ops="+-", modulus=10),
}
# Tasks whose answer is not the trace's last result (so `evaluate_prompt` does not give it). "chain_sum": the trace
# runs 2-5 additions/subtractions mod 10 and the answer is the sum of the step results (0-45), an operation the trace
# never shows: the answering model must compute it from the thoughts, so a larger answering model can do better. Its
# prompt is flat (`6-9+9+8=`, left to right): copying each step's operator out of nested parentheses was what a
# ~1M-parameter parent got wrong most.
ANSWER_PRESETS: dict[str, dict[str, Any]] = {
    "chain_sum": dict(min_steps=2, max_steps=5, max_operand=9, ops="+-", modulus=10, answer="sum", flat=True),
}
ANSWERS = ("last", "sum")


@dataclasses.dataclass(frozen=True)
class ReasoningTaskConfig:
    """Difficulty knobs of the arithmetic task; defaults are the "easy" preset."""

    min_steps: int = 1  #: fewest operations per problem
    max_steps: int = 2  #: most operations per problem
    max_operand: int = 9  #: largest operand
    ops: str = "+-*"  #: operators used, from '+-*'
    modulus: int = 100  #: every intermediate result is taken mod this
    eval_fraction: float = 0.1  #: share of problems held out for evaluation (by hash)
    seed: int = 0  #: seed of the problem generator
    answer: str = "last"  #: "last": the last step's result; "sum": the sum of every step's result (not reduced)
    flat: bool = False  #: write the prompt without parentheses (`6-9+9=`: left to right, as the trace computes)

    def __post_init__(self):
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ValueError(f"data.reasoning.{name}: {message}")

        for name in ("min_steps", "max_steps", "max_operand", "modulus", "seed"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
        check(self.min_steps >= 1, "min_steps", f"must be >= 1, got {self.min_steps}")
        check(self.max_steps >= self.min_steps, "max_steps",
              f"must be >= min_steps={self.min_steps}, got {self.max_steps}")
        check(self.max_operand >= 1, "max_operand", f"must be >= 1, got {self.max_operand}")
        check(self.modulus >= 2, "modulus", f"must be >= 2, got {self.modulus}")
        check(isinstance(self.ops, str) and len(self.ops) > 0 and set(self.ops) <= set(OPS), "ops",
              f"must be a non-empty string of characters from {OPS!r}, got {self.ops!r}")
        check(len(set(self.ops)) == len(self.ops), "ops", f"has repeated characters: {self.ops!r}")
        check(isinstance(self.eval_fraction, (int, float)) and 0.0 < self.eval_fraction < 1.0, "eval_fraction",
              f"must be in (0, 1), got {self.eval_fraction!r}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.answer in ANSWERS, "answer", f"must be one of {ANSWERS}, got {self.answer!r}")
        check(isinstance(self.flat, bool), "flat", f"must be True or False, got {self.flat!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ReasoningTaskConfig:
        """One of PRESETS or ANSWER_PRESETS ("easy", ..., "chain_sum"), with optional field overrides."""
        presets = {**PRESETS, **ANSWER_PRESETS}
        if name not in presets:
            raise ValueError(f"data.reasoning: unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReasoningTaskConfig:
        return schema.from_dict(cls, data, "data.reasoning")  # the one unknown-field check of every section


@dataclasses.dataclass(frozen=True)
class ReasoningExample:
    """One problem. `text` = prompt + "<think>" + trace + "</think>" + answer (eos is added when encoding)."""

    prompt: str
    trace: str
    answer: str
    text: str
    num_steps: int


def _u64(*parts: Any) -> int:
    """A stable 64-bit hash of `parts` (independent of PYTHONHASHSEED and platform)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def split_of(prompt: str, cfg: ReasoningTaskConfig) -> str:
    """The split a prompt belongs to; depends only on the prompt text and `eval_fraction`."""
    return "eval" if _u64("reasoning-split", prompt) < cfg.eval_fraction * 2.0**64 else "train"


def apply_op(left: int, op: str, right: int, modulus: int) -> int:
    """One step of the task: `(left op right) mod modulus`."""
    if op == "+":
        value = left + right
    elif op == "-":
        value = left - right
    elif op == "*":
        value = left * right
    else:
        raise ValueError(f"unknown op {op!r}")
    return value % modulus


def _generate(rng: random.Random, cfg: ReasoningTaskConfig) -> ReasoningExample:
    num_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    value = rng.randint(0, cfg.max_operand)
    expr = str(value)
    steps: list[str] = []
    results: list[int] = []
    for k in range(num_steps):
        op = rng.choice(cfg.ops)
        operand = rng.randint(0, cfg.max_operand)
        result = apply_op(value, op, operand, cfg.modulus)
        expr = f"({expr}){op}{operand}" if k > 0 and not cfg.flat else f"{expr}{op}{operand}"
        steps.append(f"{value}{op}{operand}={result}")
        results.append(result)
        value = result
    prompt = f"{expr}="
    trace = ";".join(steps)
    answer = str(sum(results) if cfg.answer == "sum" else value)
    return ReasoningExample(prompt=prompt, trace=trace, answer=answer,
                            text=f"{prompt}{THINK}{trace}{END_THINK}{answer}", num_steps=num_steps)


def make_example(index: int, split: str, cfg: ReasoningTaskConfig) -> ReasoningExample:
    """Example `index` of `split`: a pure function of (index, split, cfg), so it serves random access.

    Candidates are drawn from a stream keyed by (seed, split, index, attempt) until one whose prompt hashes
    into `split`; that makes the splits disjoint by construction.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    index = int(index)
    if index < 0:
        raise IndexError(f"example index must be >= 0, got {index}")
    for attempt in range(_MAX_ATTEMPTS):
        example = _generate(random.Random(_u64("reasoning", cfg.seed, split, index, attempt)), cfg)
        if split_of(example.prompt, cfg) == split:
            return example
    raise ValueError(f"data.reasoning: no {split} problem found in {_MAX_ATTEMPTS} draws; the problem space of "
                     f"{cfg} is too small for a train/eval split (raise max_operand or max_steps)")


def evaluate_prompt(prompt: str, modulus: int) -> int:
    """Recompute the answer of a prompt like `((7+5)*3)-4=` from its text (used to check the generator)."""
    expr = prompt.rstrip("=").replace("(", "").replace(")", "")
    tokens = re.findall(r"\d+|[+\-*]", expr)
    value = int(tokens[0]) % modulus
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        value = apply_op(value, op, int(operand), modulus)
    return value


def answer_of_trace(trace: str, cfg: ReasoningTaskConfig) -> str | None:
    """The answer that the results written in `trace` (`7+5=2;2-3=9`) imply, right or wrong: what an answering model
    reading those thoughts should say. None when the trace holds no result."""
    results = [int(r) for r in re.findall(r"=(\d+)", trace)]
    if not results:
        return None
    return str(sum(results) if cfg.answer == "sum" else results[-1])


def encode_example(example: ReasoningExample, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Tokens `bos prompt <think> trace </think> answer eos` and a 0/1 loss mask (int32 arrays).

    The mask is 1 exactly on trace, `</think>`, answer and eos tokens: the model learns to reason and answer,
    not to predict the question.
    """
    parts = [
        ([tokenizer.bos_id], 0),
        (tokenizer.encode(example.prompt), 0),
        ([tokenizer.think_id], 0),
        (tokenizer.encode(example.trace), 1),
        ([tokenizer.end_think_id], 1),
        (tokenizer.encode(example.answer), 1),
        ([tokenizer.eos_id], 1),
    ]
    tokens = np.fromiter((t for ids, _ in parts for t in ids), dtype=np.int32)
    mask = np.fromiter((m for ids, m in parts for _ in ids), dtype=np.int32)
    return tokens, mask


def encode_prompt(example: ReasoningExample, tokenizer: Tokenizer) -> list[int]:
    """What to feed a model to generate the answer: `bos prompt <think>`."""
    return [tokenizer.bos_id, *tokenizer.encode(example.prompt), tokenizer.think_id]


def score_answer(generated: str | Sequence[int] | np.ndarray, example: ReasoningExample,
                 tokenizer: Tokenizer | None = None) -> bool:
    """True when the answer after the first `</think>` (up to eos) equals the example's answer.

    `generated` is either text (decoded with skip_special=False, with or without the prompt) or token ids
    (decoded with `tokenizer`, ByteTokenizer by default). Anything but the answer digits and whitespace
    between `</think>` and eos makes it wrong.
    """
    tokenizer = tokenizer or ByteTokenizer()
    if isinstance(generated, str):
        text = generated
        if END_THINK not in text:
            return False
        tail = text.split(END_THINK, 1)[1]
        tail = tail.split(tokenizer.eos_token, 1)[0]
    else:
        ids = [int(i) for i in np.asarray(generated).reshape(-1)]
        end_think = tokenizer.end_think_id
        if end_think not in ids:
            return False
        ids = ids[ids.index(end_think) + 1:]
        if tokenizer.eos_id in ids:
            ids = ids[:ids.index(tokenizer.eos_id)]
        tail = tokenizer.decode(ids, skip_special=True)
    match = _ANSWER.fullmatch(tail)
    return match is not None and match.group(1) == example.answer


def eval_prompts(n: int, cfg: ReasoningTaskConfig) -> list[ReasoningExample]:
    """The first `n` examples of the eval split (fixed for a given cfg): the accuracy benchmark."""
    return [make_example(i, "eval", cfg) for i in range(n)]


class ReasoningSource:
    """Random-access view of one split (a grain data source): element i is `make_example(i, split, cfg)`."""

    def __init__(self, cfg: ReasoningTaskConfig, split: str = "train", length: int = 2**31):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.cfg = cfg
        self.split = split
        self._length = int(length)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> ReasoningExample:
        return make_example(int(index) % self._length, self.split, self.cfg)

    def __repr__(self) -> str:
        return f"ReasoningSource(split={self.split!r}, cfg={self.cfg})"

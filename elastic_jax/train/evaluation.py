"""Periodic evaluation: held-out loss, and reasoning accuracy from greedy generation scored by the task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.data import ReasoningExample, Tokenizer, encode_prompt, score_answer
from elastic_jax.inference.generate import generate


def eval_loss(eval_fn: Callable[[Any, dict], dict], params: Any, batches: Sequence[dict[str, jax.Array]]) -> float:
    """Token-weighted mean cross-entropy over the eval batches."""
    total, tokens = 0.0, 0.0
    for batch in batches:
        out = jax.device_get(eval_fn(params, batch))
        total += float(out["loss"]) * float(out["tokens"])
        tokens += float(out["tokens"])
    return total / max(tokens, 1.0)


def prompt_groups(examples: Sequence[ReasoningExample], tokenizer: Tokenizer,
                  batch_size: int) -> list[tuple[np.ndarray, list[int]]]:
    """Prompts grouped by length into full [batch_size, L] arrays (short groups repeat their last prompt).

    Equal lengths need no padding (which would change a recurrent model's state), and fixed batch sizes
    bound the compilations to one per distinct prompt length. Returns (tokens, example indices) pairs.
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    encoded = [encode_prompt(example, tokenizer) for example in examples]
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    groups = []
    for length in sorted(by_length):
        indices = by_length[length]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            rows = [encoded[i] for i in chunk] + [encoded[chunk[-1]]] * (batch_size - len(chunk))
            groups.append((np.asarray(rows, np.int32), chunk))
    return groups


def reasoning_accuracy(cfg: ModelConfig, params: Any, examples: Sequence[ReasoningExample], tokenizer: Tokenizer,
                       max_new_tokens: int, batch_size: int = 16) -> float:
    """Share of `examples` answered correctly by greedy decoding (scored with the task's score_answer)."""
    if not examples:
        return float("nan")
    correct = 0
    batch_size = max(1, min(batch_size, len(examples)))
    for tokens, indices in prompt_groups(examples, tokenizer, batch_size):
        out = generate(cfg, params, tokens, max_new_tokens, eos_id=tokenizer.eos_id)
        for row, i in enumerate(indices):
            correct += bool(score_answer(out[row, tokens.shape[1]:], examples[i], tokenizer))
    return correct / len(examples)

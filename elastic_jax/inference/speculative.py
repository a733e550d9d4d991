"""Nested self-speculative decoding: a small budget of the checkpoint drafts k tokens, a larger one verifies them in
one pass, and both are cut from the one resident parent (no memory beyond the caches).

    tokens, stats = speculative_generate(engine, prompts, target_budget=1.0, draft_budget=0.4, k=4,
                                         max_new_tokens=64)
    stats.acceptance_rate    # accepted drafts / drafted tokens

Greedy output is the target budget's own greedy text (`engine.generate(prompts, target_budget)`), up to float
rounding (the verification pass computes its k+1 positions together, plain decoding one at a time, so a near
tie between two tokens could break differently); sampled output follows the target budget's distribution under the
same temperature / top-k / top-p. How a round works, and how the Mamba states return to the last accepted token:
speculative_program.py. `start` + `decode` keep a batch going across calls, as the engine's Batch does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference import decoder
from elastic_jax.inference.programs import decode_target
from elastic_jax.inference.sampling import check_sampling
from elastic_jax.inference.speculative_program import make_speculative
from elastic_jax.model.functional import InputError


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
    """What one call did, per row: rounds (one draft of k tokens and one verification each), drafts accepted,
    tokens made."""

    target_budget: float
    draft_budget: float
    k: int
    rounds: tuple[int, ...]
    accepted: tuple[int, ...]
    new_tokens: tuple[int, ...]

    @property
    def drafted(self) -> int:
        return self.k * sum(self.rounds)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafted tokens (0 when nothing was drafted)."""
        return sum(self.accepted) / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens made per verification pass of the target (plain decoding: 1)."""
        return sum(self.new_tokens) / sum(self.rounds) if sum(self.rounds) else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"target_budget": self.target_budget, "draft_budget": self.draft_budget, "k": self.k,
                "rounds": sum(self.rounds), "drafted": self.drafted, "accepted": sum(self.accepted),
                "new_tokens": sum(self.new_tokens), "acceptance_rate": self.acceptance_rate,
                "tokens_per_round": self.tokens_per_round}


@dataclasses.dataclass
class SpeculativeBatch:
    """Rows decoded speculatively: the draft's and the target's caches each hold every row's text but its last
    token (`last`); `tokens` is each row's whole text."""

    target: decoder.Batch
    draft: decoder.Batch
    k: int
    target_budget: float
    draft_budget: float
    tokens: list[list[int]]
    rounds: np.ndarray  # [B] rounds so far per row (the sampling key index)


def check_speculative(engine: Any, target_budget: float, draft_budget: float, k: int) -> None:
    """One clear error for a draft that cannot serve the target (checked before anything compiles)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k (draft tokens per round, --draft-tokens) must be an integer >= 1, got {k!r}")
    for name, budget in (("target_budget", target_budget), ("draft_budget", draft_budget)):
        try:
            engine.arch(budget)
        except ElasticError as err:
            raise ElasticError(f"{name}: {err}") from None
    if not draft_budget < target_budget:
        raise InputError(f"draft_budget ({draft_budget}) must be smaller than target_budget ({target_budget}): the "
                         f"draft is the cheaper nested model that proposes tokens for the target to verify")


def start(engine: Any, prompts: Sequence[Sequence[int]], target_budget: float, draft_budget: float, k: int,
          capacity: int, seed: int = 0) -> SpeculativeBatch:
    """Both budgets' caches of `capacity` tokens, filled with each prompt but its last token."""
    check_speculative(engine, target_budget, draft_budget, k)
    heads = [list(p)[:-1] for p in prompts]
    target = engine.start(target_budget, heads, capacity, seed)
    draft = engine.start(draft_budget, heads, capacity, seed)
    return SpeculativeBatch(target, draft, int(k), float(target_budget), float(draft_budget),
                            [list(map(int, p)) for p in prompts], np.zeros(len(prompts), np.int32))


def decode(engine: Any, batch: SpeculativeBatch, max_new_tokens: int, *, stop_ids: Sequence[int] = (),
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> tuple[list[list[int]], SpeculativeStats]:
    """Up to `max_new_tokens` new tokens per row (a row ends after any of `stop_ids`), and what the call did; the
    batch continues from there."""
    check_sampling(temperature, top_k, top_p, engine.cfg.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    k, capacity = batch.k, batch.target.capacity
    room = capacity - max(len(t) for t in batch.tokens) - k + 1
    if max_new_tokens > room:
        raise InputError(f"max_new_tokens {max_new_tokens} exceeds the room left in the cache ({room} tokens, with "
                         f"k={k} drafted tokens of headroom)")
    rows, stops = len(batch.tokens), tuple(int(s) for s in stop_ids)
    width = capacity + k + 1
    targets = (decode_target(rows, max_new_tokens), decode_target(rows, max_new_tokens, tokens=k + 1))
    cfg, tspec, dspec = engine.cfg, batch.target.spec, batch.draft.spec
    fn = engine.programs.get(("speculative", cfg, tspec, dspec, rows, capacity, k, *targets),
                             lambda: make_speculative(cfg, tspec, dspec, rows, width, k, cfg.pad_token_id, *targets))
    last = jnp.asarray([t[-1] for t in batch.tokens], jnp.int32)
    out, count, rounds, accepted, batch.draft.caches, batch.target.caches, _ = fn(
        engine.params, batch.draft.caches, batch.target.caches, last, batch.target.keys, jnp.asarray(batch.rounds),
        jnp.int32(max_new_tokens), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
        jnp.asarray(stops or (-1,), jnp.int32))
    out, count, rounds, accepted = (np.asarray(x) for x in (out, count, rounds, accepted))
    new = [out[r, :count[r]].tolist() for r in range(rows)]
    for r, toks in enumerate(new):
        batch.tokens[r].extend(toks)
    batch.rounds = batch.rounds + rounds
    stats = SpeculativeStats(batch.target_budget, batch.draft_budget, k, tuple(int(x) for x in rounds),
                             tuple(int(x) for x in accepted), tuple(int(x) for x in count))
    return new, stats


def speculative_generate(engine: Any, prompts: Sequence[Sequence[int]], target_budget: float = 1.0,
                         draft_budget: float = 0.4, k: int = 2, max_new_tokens: int = 32, *, temperature: float = 0.0,
                         top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                         stop_ids: Sequence[int] | None = None) -> tuple[list[list[int]], SpeculativeStats]:
    """New tokens per prompt at `target_budget`, drafted `k` at a time by `draft_budget`; each row ends at its
    first stop id (included; default: the model's eos), as `engine.generate` ends. Returns (tokens, stats)."""
    check_speculative(engine, target_budget, draft_budget, k)
    check_sampling(temperature, top_k, top_p, engine.cfg.vocab_size)
    engine.check_request(prompts, max_new_tokens)
    longest, limit = max(len(p) for p in prompts), engine.cfg.max_position_embeddings
    if longest + max_new_tokens + k > limit:
        raise InputError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) + k ({k} drafted tokens) "
                         f"exceeds the context limit model.max_position_embeddings={limit}")
    capacity = decoder.capacity_for(longest + max_new_tokens + k, limit)
    batch = start(engine, prompts, target_budget, draft_budget, k, capacity, seed)
    stops = (engine.cfg.eos_token_id,) if stop_ids is None else tuple(stop_ids)
    return decode(engine, batch, max_new_tokens, stop_ids=stops, temperature=temperature, top_k=top_k, top_p=top_p)


__all__ = ["SpeculativeBatch", "SpeculativeStats", "check_speculative", "decode", "speculative_generate", "start"]


"""Choosing the next token from logits (greedy, temperature, top-k, top-p), and the checks of those settings."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from elastic_jax.model.functional import InputError


def sample_next(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Next token ids [batch] from last-position logits [batch, vocab]; temperature 0 means greedy."""
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """The logits [batch, vocab] that sampling draws from (temperature > 0): scaled by 1 / temperature, tokens
    outside the top-k and the top-p set at -inf. Their softmax is the distribution `sample_next` samples."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest set whose mass reaches top_p (always at least the best token)
        cutoff_idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def check_sampling(temperature: float, top_k: int, top_p: float, vocab: int) -> None:
    """One clear InputError for a sampling setting outside what is allowed."""
    if not isinstance(temperature, (int, float)) or temperature < 0 or not math.isfinite(temperature):
        raise InputError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise InputError(f"top_k must be an integer in [0, vocab_size={vocab}], got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


__all__ = ["check_sampling", "filter_logits", "sample_next"]

"""The compiled programs of a slot batch (slots.py): reset one row, feed one row a piece of its prompt, and decode
a few tokens for every row with per-row sampling settings and stop ids passed as arrays.

The programs take a budget's weights already sliced (slots.py slices each architecture once and keeps it), so the
model is built from the nested config itself. Feeding runs the same per-sequence step under vmap as the engine's
feed (programs.py), for one row picked by a traced index: a long prompt costs what its own tokens cost, not what
every row's would. Settings are traced arrays, so one decode program per architecture serves every mix of greedy
and sampled requests; the sampler computes what `sampling.sample_next` computes for each row's settings.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.inference.programs import _hold, _rows, feed_target
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.functional import build


def filter_row(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """One row's logits [V] under traced settings, as `sampling.filter_logits` shapes them with constants:
    divided by the temperature (0: left as they are), then top-k (0: off), then top-p (1: off); the tokens cut
    are -inf."""
    vocab = logits.shape[-1]
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    kth = jnp.sort(scaled)[::-1][jnp.clip(top_k - 1, 0, vocab - 1)]
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    ordered = jnp.sort(scaled)[::-1]
    cum = jnp.cumsum(jax.nn.softmax(ordered))
    cutoff = ordered[jnp.sum(cum < top_p)]  # the smallest set whose mass reaches top_p, the best token always kept
    return jnp.where((top_p < 1.0) & (scaled < cutoff), -jnp.inf, scaled)


def sample_row(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
               top_p: jax.Array) -> jax.Array:
    """One row's next token from logits [V] under traced settings: greedy where temperature is 0, else temperature,
    then top-k (0: off), then top-p (1: off), as `sampling.sample_next` does with constants."""
    greedy = jnp.argmax(logits).astype(jnp.int32)
    scaled = filter_row(logits, temperature, top_k, top_p)
    sampled = jax.random.categorical(key, scaled[None], axis=-1)[0].astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def make_reset() -> Callable:
    """jit(caches, logits, row) -> (caches, logits) with that row empty (position 0, zero states)."""
    def run(caches, logits, row):
        caches = jax.tree.map(lambda x: x.at[row].set(jnp.zeros_like(x[row])), caches)
        return caches, logits.at[row].set(0.0)

    return jax.jit(run, donate_argnums=(0, 1))


def _vmapped_step(sub_cfg: ModelConfig, target: CompileTarget) -> Callable:
    """f(weights, tokens [B, L], caches of B sequences) -> (last logits [B, V], caches), as programs.py runs it."""
    model = build(sub_cfg, target=target)

    def one(params, tokens, cache):
        logits, cache = model.apply({"params": params}, tokens[None], cache)
        return logits[0, -1], cache

    return jax.vmap(one, in_axes=(None, 0, 0))


def make_feed_row(sub_cfg: ModelConfig) -> Callable:
    """jit(weights, caches, logits, tokens [piece], row) -> (logits, caches): the row's cache takes the tokens."""
    step = _vmapped_step(sub_cfg, feed_target(1))

    def run(weights, caches, logits, tokens, row):
        mine = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, row, 1), caches)
        new_logits, mine = step(weights, tokens[None], mine)
        caches = jax.tree.map(lambda x, m: jax.lax.dynamic_update_slice_in_dim(x, m, row, 0), caches, mine)
        return jax.lax.dynamic_update_slice_in_dim(logits, new_logits, row, 0), caches

    return jax.jit(run, donate_argnums=(1,))


def make_decode_rows(sub_cfg: ModelConfig, rows: int, steps: int) -> Callable:
    """jit(weights, caches, logits, keys [B], emitted [B], done [B], left [B], temperature [B], top_k [B], top_p [B],
    stops [B, S]) -> (tokens [B, steps], counts [B], logits, caches, done): up to min(steps, left[r]) tokens per row,
    a row ending at any of its stop ids (-1 pads). Row r's n-th sample uses fold_in(keys[r], n), as the engine's
    decode does, and a row marked done holds its state (programs.py `_hold`)."""
    step = _vmapped_step(sub_cfg, CompileTarget(jax.default_backend(), sequences=rows))
    pad = sub_cfg.pad_token_id

    def run(weights, caches, logits, keys, emitted, done, left, temperature, top_k, top_p, stops):
        done = done | (left <= 0)

        def body(carry):
            t, logits, caches, done, out, count = carry
            keys_now = jax.vmap(jax.random.fold_in)(keys, emitted + count)
            tok = jax.vmap(sample_row)(logits, keys_now, temperature, top_k, top_p)
            tok = jnp.where(done, pad, tok)
            new_logits, new_caches = step(weights, tok[:, None], caches)
            caches = _hold(done, new_caches, caches)
            logits = _rows(done, logits, new_logits)
            count = count + (~done).astype(jnp.int32)
            stopped = jnp.any(tok[:, None] == stops, axis=-1) | (count >= left)
            return t + 1, logits, caches, done | stopped, out.at[:, t].set(tok), count

        def cond(carry):
            return (carry[0] < steps) & ~jnp.all(carry[3])

        out = jnp.full((rows, steps), pad, jnp.int32)
        init = (jnp.zeros((), jnp.int32), logits, caches, done, out, jnp.zeros((rows,), jnp.int32))
        _, logits, caches, done, out, count = jax.lax.while_loop(cond, body, init)
        return out, count, logits, caches, done

    return jax.jit(run, donate_argnums=(1,))


__all__ = ["filter_row", "make_decode_rows", "make_feed_row", "make_reset", "sample_row"]

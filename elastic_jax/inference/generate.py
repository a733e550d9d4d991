"""Cached generation: a prefill, then a compiled loop of one-token decode steps (greedy or sampled).

The whole decode loop is one `lax.while_loop` inside one jit, so a token costs one step of the model and
no Python dispatch. Compiled programs are cached per (config, batch, lengths, sampling settings).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.kernels import cpu_gemv
from elastic_jax.model.cache import init_cache
from elastic_jax.model.decode_views import DECODE_VIEWS, decode_views
from elastic_jax.model.functional import InputError, build, check_tokens


def sample_next(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Next token ids [batch] from last-position logits [batch, vocab]; temperature 0 means greedy."""
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
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
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@lru_cache(maxsize=32)
def _prefill_fn(cfg: ModelConfig):
    model = build(cfg)
    return jax.jit(lambda params, tokens, cache: model.apply({"params": params}, tokens, cache))


def prefill(cfg: ModelConfig, params: dict, tokens, max_len: int, cache: dict | None = None):
    """Run the prompt through the model, filling a fresh cache of capacity `max_len`: (logits, cache)."""
    tokens = check_tokens(cfg, tokens)
    if tokens.shape[1] > max_len:
        raise InputError(f"max_len={max_len} is shorter than the prompt ({tokens.shape[1]} tokens)")
    cache = init_cache(cfg, tokens.shape[0], max_len) if cache is None else cache
    return _prefill_fn(cfg)(params, jnp.asarray(tokens), cache)


def decode_step(cfg: ModelConfig, params: dict, token, cache: dict):
    """One token per sequence (`token` [batch, 1]) through the cached model: (logits [batch, 1, vocab], cache)."""
    return _prefill_fn(cfg)(params, jnp.asarray(token, jnp.int32), cache)


@lru_cache(maxsize=32)
def _generate_fn(cfg: ModelConfig, max_new: int, temperature: float, top_k: int, top_p: float, eos_id: int,
                 pad_id: int):
    model = build(cfg)

    def run(params, prompt, key):
        batch, plen = prompt.shape
        cache = init_cache(cfg, batch, plen + max_new)
        logits, cache = model.apply({"params": params}, prompt, cache)
        out = jnp.full((batch, max_new), pad_id, jnp.int32)
        variables = {"params": params}
        kernels = batch == 1 and cpu_gemv.available()  # one row: the CPU decode kernels (kernels/cpu_gemv)
        if jax.default_backend() == "cpu" and not kernels:  # built once, outside the loop (model/decode_views.py)
            variables[DECODE_VIEWS] = decode_views(params, jnp.dtype(cfg.compute_dtype))

        def cond(carry):
            step, _, _, done, _, _ = carry
            return (step < max_new) & ~jnp.all(done)

        def body(carry):
            step, last_logits, cache, done, out, key = carry
            key, sub = jax.random.split(key)
            tok = sample_next(last_logits, sub, temperature, top_k, top_p)
            tok = jnp.where(done, pad_id, tok)
            out = out.at[:, step].set(tok)
            done = done | (tok == eos_id)
            with cpu_gemv.decode_products() if kernels else contextlib.nullcontext():
                logits, cache = model.apply(variables, tok[:, None], cache)
            return step + 1, logits[:, -1], cache, done, out, key

        init = (jnp.zeros((), jnp.int32), logits[:, -1], cache, jnp.zeros((batch,), bool), out, key)
        steps, _, _, _, out, _ = jax.lax.while_loop(cond, body, init)
        return out, steps

    return jax.jit(run)


def generate(cfg: ModelConfig, params: dict, prompt_tokens, max_new_tokens: int = 32, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None) -> np.ndarray:
    """Prompt [batch, length] -> prompt followed by up to `max_new_tokens` tokens, like transformers' generate.

    Stops when every sequence has produced EOS; a finished sequence is padded with the pad id.
    """
    prompt = check_tokens(cfg, prompt_tokens, "prompt_tokens")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt.shape[1] + max_new_tokens > cfg.max_position_embeddings:
        raise InputError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"model.max_position_embeddings={cfg.max_position_embeddings}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or top_k > cfg.vocab_size:
        raise InputError(f"top_k must be in [0, vocab_size={cfg.vocab_size}], got {top_k}")
    eos = cfg.eos_token_id if eos_id is None else eos_id
    fn = _generate_fn(cfg, int(max_new_tokens), float(temperature), int(top_k), float(top_p), int(eos),
                      int(cfg.pad_token_id))
    out, steps = fn(params, jnp.asarray(prompt), jax.random.PRNGKey(seed))
    return np.concatenate([prompt, np.asarray(out)[:, : int(steps)]], axis=1)

"""Cached generation for a bare model: the engine's decode stack (decoder.py) over the full architecture.

`generate` feeds the prompts and runs the decode loop of programs.py (one `lax.while_loop` inside one jit, so a
token costs one step of the model and no Python dispatch); `prefill` and `decode_step` are the plain cached
forward pass, one call at a time (the reference the decode programs are tested against).
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.inference import decoder
from elastic_jax.inference.sampling import check_sampling
from elastic_jax.model.cache import init_cache
from elastic_jax.model.functional import InputError, build, check_tokens


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


def generate(cfg: ModelConfig, params: dict, prompt_tokens, max_new_tokens: int = 32, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None) -> np.ndarray:
    """Prompt [batch, length] -> prompt followed by up to `max_new_tokens` tokens, like transformers' generate.

    Stops when every sequence has produced EOS; a finished sequence is padded with the pad id. Row r samples with
    fold_in(PRNGKey(seed), r), as the engine does.
    """
    prompt = check_tokens(cfg, prompt_tokens, "prompt_tokens")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    if prompt.shape[1] + max_new_tokens > cfg.max_position_embeddings:
        raise InputError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"model.max_position_embeddings={cfg.max_position_embeddings}")
    check_sampling(temperature, top_k, top_p, cfg.vocab_size)
    eos = cfg.eos_token_id if eos_id is None else eos_id
    capacity = decoder.capacity_for(prompt.shape[1] + max_new_tokens, cfg.max_position_embeddings)
    batch = decoder.start(cfg, ElasticSpec(), params, prompt.tolist(), capacity, seed)
    new = decoder.decode(batch, params, max_new_tokens, stop_ids=(eos,), temperature=temperature, top_k=top_k,
                         top_p=top_p)
    width = max(len(row) for row in new)
    out = np.full((prompt.shape[0], width), cfg.pad_token_id, np.int32)
    for r, row in enumerate(new):
        out[r, :len(row)] = row
    return np.concatenate([prompt, out], axis=1)


__all__ = ["decode_step", "generate", "prefill"]

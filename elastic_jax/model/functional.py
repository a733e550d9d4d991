"""Pure-function entry points over a parameter pytree: init, forward, and input checks."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.target import CompileTarget, local_target
from elastic_jax.model.hybrid import NemotronH
from elastic_jax.model.layer_groups import PLAIN, LayerExecution
from elastic_jax.model.masks import Masks


class InputError(ValueError):
    """Bad model input (e.g. a token id outside the vocabulary); the message says what is allowed."""


def build(cfg: ModelConfig, *, ssd_impl: str = "auto", moe_strategy: str = "auto",
          execution: LayerExecution = PLAIN, target: CompileTarget | None = None) -> NemotronH:
    """The model compiled for `target` (kernels/target.py; None: the plain target of this process's devices);
    `execution` sets rematerialisation and the layer scan of training passes (same values)."""
    target = local_target() if target is None else target
    return NemotronH(cfg, ssd_impl=ssd_impl, moe_strategy=moe_strategy, execution=execution, target=target)


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random float32 parameters for `cfg`, initialised as transformers initialises NemotronH."""
    model = build(cfg)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), tokens)["params"]


def param_shapes(cfg: ModelConfig) -> dict:
    """The parameter pytree as ShapeDtypeStructs, computed without allocating anything."""
    model = build(cfg)
    out = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 1), jnp.int32))
    return out["params"]


def check_tokens(cfg: ModelConfig, tokens, name: str = "tokens") -> np.ndarray | jax.Array:
    """Validate a concrete [batch, length] int array of token ids before anything is compiled."""
    if isinstance(tokens, jax.core.Tracer):
        return tokens
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a [batch, length] array of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: expected integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= cfg.vocab_size):
        bad = int(arr.max()) if arr.max() >= cfg.vocab_size else int(arr.min())
        raise InputError(f"{name}: token id {bad} is outside the vocabulary; allowed ids are 0..{cfg.vocab_size - 1} "
                         f"(model.vocab_size={cfg.vocab_size})")
    if arr.shape[1] > cfg.max_position_embeddings:
        raise InputError(f"{name}: length {arr.shape[1]} exceeds model.max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    return arr.astype(np.int32)


@lru_cache(maxsize=64)
def _jitted_forward(cfg: ModelConfig, ssd_impl: str, moe_strategy: str):
    model = build(cfg, ssd_impl=ssd_impl, moe_strategy=moe_strategy)
    return jax.jit(lambda params, tokens, segment_ids=None:
                   model.apply({"params": params}, tokens, segment_ids=segment_ids)[0])


@lru_cache(maxsize=64)
def _jitted_masked_forward(cfg: ModelConfig, ssd_impl: str, moe_strategy: str):
    model = build(cfg, ssd_impl=ssd_impl, moe_strategy=moe_strategy)
    return jax.jit(lambda params, tokens, masks, segment_ids=None:
                   model.apply({"params": params}, tokens, masks=masks, segment_ids=segment_ids)[0])


def check_segment_ids(tokens, segment_ids) -> np.ndarray | jax.Array | None:
    """None, or a validated int32 array of document ids with the shape of `tokens` (checked before compiling)."""
    if segment_ids is None or isinstance(segment_ids, jax.core.Tracer):
        return segment_ids
    arr = np.asarray(segment_ids)
    if arr.shape != tuple(np.shape(tokens)):
        raise InputError(f"segment_ids: expected the shape of tokens {tuple(np.shape(tokens))} (a document id per "
                         f"token), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"segment_ids: expected integer document ids, got dtype {arr.dtype}")
    return arr.astype(np.int32)


def apply(cfg: ModelConfig, params: dict, tokens, *, masks: Masks | None = None, segment_ids=None,
          ssd_impl: str = "auto", moe_strategy: str = "auto") -> jax.Array:
    """Logits [batch, length, vocab] (float32) of the full forward pass; compiled once per config and shape.

    `segment_ids` [batch, length] int (optional): packed documents, numbered within each row (e.g. 1, 1, 2, 2, 2,
    0 for padding); each document's logits are those of the document run alone.

    `masks` (optional, a `Masks`) runs the elastic masked forward; the masks are traced arrays, so every
    mask value of one structure shares one compiled program.
    """
    if masks is not None and not isinstance(masks, Masks):
        raise InputError(f"masks: expected an elastic_jax.model.masks.Masks (e.g. from spec_masks), got "
                         f"{type(masks).__name__}")
    tokens = check_tokens(cfg, tokens)
    segment_ids = check_segment_ids(tokens, segment_ids)
    if isinstance(tokens, jax.core.Tracer):
        model = build(cfg, ssd_impl=ssd_impl, moe_strategy=moe_strategy)
        return model.apply({"params": params}, tokens, masks=masks, segment_ids=segment_ids)[0]
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    if masks is not None:
        return _jitted_masked_forward(cfg, ssd_impl, moe_strategy)(params, jnp.asarray(tokens), masks, segment_ids)
    return _jitted_forward(cfg, ssd_impl, moe_strategy)(params, jnp.asarray(tokens), segment_ids)

"""Gumbel-softmax sampling of the router's choices: the temperature / scale schedule, the probabilities
(soft, or hard with straight-through gradients) and the masks they give."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.candidates import Axis
from elastic_jax.elastic.router.chain import masked
from elastic_jax.elastic.router.config import RouterConfig
from elastic_jax.model.masks import LayerMasks, Masks


def schedule(rc: RouterConfig, progress: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(temperature, logit scale) at training progress in [0, 1]: exponential anneal, linear rise."""
    progress = jnp.clip(progress, 0.0, 1.0)
    tau = rc.tau_start * (rc.tau_end / rc.tau_start) ** progress
    return tau, rc.scale_start + (rc.scale_end - rc.scale_start) * progress


def sample_probs(logits: jax.Array, key: jax.Array | None, tau: jax.Array, scale: jax.Array, hard: bool,
                 floor: jax.Array | None = None) -> jax.Array:
    """Gumbel-softmax probabilities over choices; `hard` gives the argmax one-hot with straight-through grads.
    `floor` ([rows] choice indices, a nested chain's bound) gives every wider candidate probability zero."""
    # Standardised logits: the schedule alone sets how sharp the choice is, so large router weights cannot
    # saturate the softmax (and kill its gradient) before the resource loss has been met.
    z = (logits - logits.mean(-1, keepdims=True)) / (logits.std(-1, keepdims=True) + 1e-6) * scale
    z = masked(z, floor)
    if key is not None:
        z = z + jax.random.gumbel(key, z.shape)
    probs = jax.nn.softmax(z / tau, axis=-1)
    if not hard:
        return probs
    one_hot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=probs.dtype)
    return one_hot + probs - jax.lax.stop_gradient(probs)


def masks_from_probs(cfg: ModelConfig, axes: Sequence[Axis], probs: dict[str, jax.Array],
                     choice_mask_table: dict[str, np.ndarray]) -> Masks:
    """The model's Masks for a router distribution: sum_i pi_i * prefix_mask_i."""
    hidden = jnp.ones((cfg.hidden_size,), jnp.float32)
    layers: list[dict[str, jax.Array]] = [{} for _ in range(cfg.num_layers)]
    for axis in axes:
        mask = probs[axis.name] @ jnp.asarray(choice_mask_table[axis.name])  # [rows, size]
        if axis.name == "hidden":
            hidden = mask[0]
        else:
            for i, layer in enumerate(axis.layers):
                layers[layer][axis.name] = mask[i if axis.heterogeneous else 0]
    return Masks(hidden=hidden, layers=tuple(LayerMasks(**entry) for entry in layers))

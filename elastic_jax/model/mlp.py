"""The non-gated relu^2 MLP used by dense `-` layers and by the MoE shared expert."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.model.linear import Linear


def relu2(x: jax.Array) -> jax.Array:
    """Squared ReLU, the activation of every Nemotron-H feed-forward network."""
    return jnp.square(jax.nn.relu(x))


def dense(features: int, dtype: jnp.dtype, name: str, init_std: float = 0.02, grad_transpose: str = "input"
          ) -> Linear:
    """A bias-free Linear with float32 parameters ([in, out] kernel) computing in `dtype`."""
    return Linear(features, dtype, nn.initializers.normal(init_std), grad_transpose, name=name)


class MLP(nn.Module):
    """down(relu(up(x))^2)."""

    hidden_size: int
    intermediate_size: int
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`mask` [intermediate_size] (optional) scales the hidden neurons (0 drops a neuron)."""
        h = relu2(dense(self.intermediate_size, self.dtype, "up_proj", self.init_std)(x))
        if mask is not None:
            h = h * mask.astype(h.dtype)
        return dense(self.hidden_size, self.dtype, "down_proj", self.init_std, "output")(h)

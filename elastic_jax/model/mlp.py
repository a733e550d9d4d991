"""The non-gated relu^2 MLP used by dense `-` layers and by the MoE shared expert."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.declare import ParamDecl, axis, by_name, dim, elastic_axis_of, kernel, linear
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks


def relu2(x: jax.Array) -> jax.Array:
    """Squared ReLU, the activation of every Nemotron-H feed-forward network."""
    return jnp.square(jax.nn.relu(x))


def mlp_declarations(sizes: dict[str, int], width: str = "mlp") -> tuple[ParamDecl, ...]:
    """up: embed x width, down: width x embed; `width` names the neuron axis ("mlp", or "shared_mlp" for the MoE
    shared expert), which shards under the name "mlp" either way."""
    embed, neurons = axis("embed"), dim("mlp", width)
    return kernel("up_proj", embed, neurons, sizes), kernel("down_proj", neurons, embed, sizes)


class MLP(nn.Module):
    """down(relu(up(x))^2)."""

    hidden_size: int
    intermediate_size: int
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02
    width_axis: str = "mlp"  # the logical axis of the neurons; the mask of its elastic axis scales them
    target: CompileTarget = CompileTarget()

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer: int, *, dtype: jnp.dtype = jnp.float32, **module: Any) -> MLP:
        """The dense MLP mixer of `layer` (its possibly per-layer width)."""
        return cls(hidden_size=cfg.hidden_size, intermediate_size=cfg.width("intermediate_size", layer), dtype=dtype,
                   init_std=cfg.initializer_range, **module)

    def declarations(self) -> tuple[ParamDecl, ...]:
        return mlp_declarations({"embed": self.hidden_size, self.width_axis: self.intermediate_size}, self.width_axis)

    @nn.compact
    def __call__(self, x: jax.Array, cache: None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, segment_ids: jax.Array | None = None) -> tuple[jax.Array, None]:
        """(output, None). The mask of the neurons' elastic axis (`ffn`, or `shared_ffn` for the MoE shared
        expert) [intermediate_size] scales the hidden neurons (0 drops a neuron). Tokens do not mix here, so
        `segment_ids` (packed documents) changes nothing."""
        mask = masks.get(elastic_axis_of(self.width_axis))
        decl, init = by_name(self.declarations()), nn.initializers.normal(self.init_std)
        h = relu2(linear(decl["up_proj/kernel"], self.dtype, init, self.target)(x))
        if mask is not None:
            h = h * mask.astype(h.dtype)
        return linear(decl["down_proj/kernel"], self.dtype, init, self.target, "output")(h), None

"""The training state: step counter, parameters and optimizer state, as one pytree that jit can donate."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar array), params (nested dict), opt_state (optax state)."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        """Step 0 with a fresh optimizer state for `params`."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def to_tree(self) -> dict[str, Any]:
        """The plain dict that checkpoints store ({"step", "params", "opt_state"})."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> TrainState:
        return cls(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])

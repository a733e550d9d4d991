"""Static input scales: the largest |activation| each quantised weight reads, over a few calibration batches.

Model-Optimizer's `input_scale` is per tensor and static: amax over the calibration data / 448 (FP8) or
amax / (6 * 448) (NVFP4's global input scale). Activations come from the unmodified float model through a Flax
method interceptor on every Linear (its input) and on each MoE layer: the routed experts' up projections read
the layer's input (the amax over all tokens, an upper bound of the routed ones), their down projections read
the rows' relu^2 hidden activations that the layer sows itself (elastic_jax/model/moe.py `ROUTED_ROWS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.importance import segment_batch, token_batch
from elastic_jax.model.functional import build
from elastic_jax.model.linear import Linear
from elastic_jax.model.moe import ROUTED_ROWS, MoE

_KEY = "quant_amax"


def _capture(next_fun, args, kwargs, context):
    """Interceptor: sow the amax of what each Linear and MoE layer reads, leaving the computation unchanged."""
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (Linear, MoE)):
        module.sow("intermediates", _KEY, jnp.max(jnp.abs(args[0].astype(jnp.float32))))
    return next_fun(*args, **kwargs)


@lru_cache(maxsize=8)
def _amax_fn(cfg: ModelConfig):
    model = build(cfg)

    def amax(params: dict, tokens: jax.Array, segment_ids: jax.Array | None) -> dict[str, jax.Array]:
        with nn.intercept_methods(_capture):
            _, state = model.apply({"params": params}, tokens, segment_ids=segment_ids, mutable=["intermediates"])
        out = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
            keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
            if _KEY in keys:  # .../<module>/quant_amax/0
                module = "/".join(keys[:keys.index(_KEY)])
                if module.endswith("/mixer") and "shared_experts" not in module and module.count("/") == 1:
                    out[f"{module}/up_proj"] = leaf  # a MoE layer's input: its routed experts' up projections
                else:
                    out[f"{module}/kernel"] = leaf
            elif ROUTED_ROWS in keys and keys[-1] == "hidden":
                module = "/".join(keys[:keys.index(ROUTED_ROWS)])
                out[f"{module}/down_proj"] = jnp.max(jnp.abs(leaf.astype(jnp.float32)))
        return out

    return jax.jit(amax)


def input_amax(cfg: ModelConfig, params: Any, batches: Iterable[Any]) -> dict[str, np.float32]:
    """{weight path: amax of its input} over `batches` ([batch, length] token arrays, or calibration batches
    {"inputs", "segment_ids"}) of the float model."""
    fn = _amax_fn(cfg)
    total: dict[str, np.float32] = {}
    for batch in batches:
        got = jax.device_get(fn(params, token_batch(cfg, batch), segment_batch(batch)))
        for name, value in got.items():
            total[name] = np.float32(max(total.get(name, np.float32(0)), np.float32(value)))
    if not total:
        raise ValueError("input_amax: no calibration batches")
    return total


__all__ = ["input_amax"]

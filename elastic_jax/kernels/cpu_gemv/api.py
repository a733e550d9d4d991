"""Batch-1 decode products on the CPU: one row times several weights split over a team of threads, and routed
experts read in place (gemv.cc); `KERNELS` is them as the model's `DecodeKernels` (kernels/target.py).

XLA:CPU multiplies one row by a matrix on a single thread and runs products one after another, so a batch-1
decode step, which is bound by reading the weights, reads them at one core's speed however many the machine has
(docs/inference.md). A decode program built for the target with these kernels (inference/programs.py) computes
the model's projections of a single float32 row with them: `vector_products` (one row, several weights sharing
it: Mamba's five input projections, attention's q / k / v, or one Linear) and `expert_products` (the routed
experts' up and down projections straight from the stacked [E, K, N] weights, where XLA would copy the chosen
experts out first). The attention of the one query over its cache and the Mamba state update run as plain loops
too (mixers.cc): XLA:CPU sends the first to a library call that costs more than its arithmetic, and recomputes
the convolution feeding the second once per state element. Without a C++ compiler the library is absent,
`available()` is False and decode programs keep XLA's products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.kernels.cpu_gemv.build import DISABLE_ENV, library
from elastic_jax.kernels.target import DecodeKernels


def available() -> bool:
    """The kernels are built and registered, and JAX runs on the CPU."""
    return jax.default_backend() == "cpu" and library() is not None


def _call(target: str, results, **options):
    """jax.ffi.ffi_call of one of the library's targets (building and registering it first)."""
    if library() is None:
        raise RuntimeError("the CPU decode kernels are not available (no C++ compiler, a failed build, or "
                           f"{DISABLE_ENV}=0; see the log)")
    return jax.ffi.ffi_call(target, results, **options)


def vector_products(x: jax.Array, weights) -> tuple[jax.Array, ...]:
    """x [..., K] (a few rows) times each float32 w [K, N_i] -> x @ w_i [..., N_i], all in one call; each weight
    is read once for every 8 rows."""
    lead, rows = x.shape[:-1], x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    outs = _call("elastic_jax_products",
                 [jax.ShapeDtypeStruct((rows.shape[0], w.shape[1]), jnp.float32) for w in weights])(
        rows, *(w.astype(jnp.float32) for w in weights))
    return tuple(o.reshape(*lead, o.shape[1]) for o in outs)


def expert_products(x: jax.Array, w: jax.Array, experts: jax.Array) -> jax.Array:
    """Rows x times w[experts[t, j]] of the stacked w [E, K, N] -> [T, J, N] for experts [T, J] (token t's J
    experts): x [T, K] is each token's row for all of its experts (an up projection), x [T, J, K] one row per pick
    (a down projection). Each chosen expert's weights are read once for all the tokens that chose it. An expert id
    outside [0, E) is an error."""
    picks = experts.astype(jnp.int32)
    return _call("elastic_jax_experts", jax.ShapeDtypeStruct((*picks.shape, w.shape[2]), jnp.float32))(
        x.astype(jnp.float32), w.astype(jnp.float32), picks)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_cache: jax.Array, value_cache: jax.Array,
              position: jax.Array, scale: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """L queries' attention in batch-1 decoding: their keys and values k, v [L, kv, d] are written to slots
    position..position+L-1 of the caches [1, S, kv, d], then query i of q [L, kv, g, d] (the g query heads of each
    KV head) attends to slots 0..position+i -> (out [L, kv, g, d], new key cache, new value cache). The new caches
    take the old ones' buffers (pass the cache arrays as they are, so that XLA need not copy them); scores are
    scaled by `scale`."""
    f32 = jnp.float32
    results = (jax.ShapeDtypeStruct(q.shape, f32), jax.ShapeDtypeStruct(key_cache.shape, f32),
               jax.ShapeDtypeStruct(value_cache.shape, f32))
    return _call("elastic_jax_attention", results, input_output_aliases={3: 1, 4: 2})(
        q.astype(f32), k.astype(f32), v.astype(f32), key_cache.astype(f32), value_cache.astype(f32),
        jnp.asarray(position, jnp.int32).reshape(()), scale=np.float32(scale))


def ssm_step(state: jax.Array, x: jax.Array, dt: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array,
             d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token's Mamba-2 state update (kernels/ssd/reference.py: ssd_step_reference, batch 1): state [h, p, n]
    (or [1, h, p, n]), x [h, p], dt, a, d [h], b, c [g, n] -> (y [h, p], new state); the new state takes the old
    one's buffer (pass the cache's array as it is, not reshaped, so that XLA need not copy it)."""
    f32 = jnp.float32
    return _call("elastic_jax_ssm_step", (jax.ShapeDtypeStruct(x.shape, f32), jax.ShapeDtypeStruct(state.shape, f32)),
                 input_output_aliases={0: 1})(*(v.astype(f32) for v in (state, x, dt, a, b, c, d)))


KERNELS = DecodeKernels(products=vector_products, experts=expert_products, attention=attention, ssm_step=ssm_step)

__all__ = ["KERNELS", "attention", "available", "expert_products", "ssm_step", "vector_products"]

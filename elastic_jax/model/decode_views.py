"""Weight views for cached decoding on the CPU, built once per decode call and read by every step of its loop.

A decode program built for the "views" target (kernels/target.py) reads them: batch-1 decoding on the CPU where
the CPU decode kernels, which read the stacked experts in place with no per-call copy, are not built (no C++
compiler, or ELASTIC_JAX_CPU_KERNELS=0); inference/programs.py `decode_target` chooses.

A decode step multiplies one token per sequence by each weight, so it is bound by reading the weights and by the
number of products it launches. Two layouts of the stored parameters cost a decode step there:
- a MoE layer's experts are stacked [E, ...]; XLA:CPU cannot feed a product from a slice without a copy, so a
  step would copy its routed experts out of the stack (a fifth of a `small` decode step's op time). The views
  hold every expert as its own array, and the step picks its experts' arrays with `lax.switch` (moe.py);
- a Mamba layer's input projection is five arrays (z, x, B, C, dt: each an elastic prefix, mamba2.py); the view
  concatenates them into transformers' fused in_proj [embed, z|x|B|C|dt] and cuts that into column blocks of about
  3 MB (`GEMV_BLOCK_ELEMENTS`). XLA:CPU multiplies a vector by a matrix of at most 2^19 elements on one thread
  (about 28 GB/s here) and by a larger one on all threads, fastest just above that size: on the 2-core VM a
  [512, 1288] block read at 47 GB/s, [512, 1024] at 28 and [512, 2576] at 26 (docs/inference.md). `small`'s
  in_proj [512, 2576] is two blocks: one product instead of five, and on both cores.
The views are one more copy of those weights for the length of the call. They are the variable collection
`DECODE_VIEWS`, keyed by module path like the parameters.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DECODE_VIEWS = "decode_views"
MAMBA_INPUTS = ("in_z", "in_x", "in_B", "in_C", "in_dt")  # transformers' in_proj order
GEMV_BLOCK_ELEMENTS = 3 * 2**18  # 1.5 x XLA:CPU's one-thread GEMV limit (2^19 elements)


def column_blocks(w):
    """`w` [in, out] as a tuple of column blocks of about GEMV_BLOCK_ELEMENTS each (one block if smaller)."""
    count = max(1, round(w.shape[0] * w.shape[1] / GEMV_BLOCK_ELEMENTS))
    edges = np.linspace(0, w.shape[1], count + 1).astype(int)
    return tuple(w[:, a:b] for a, b in zip(edges[:-1], edges[1:]))


def decode_views(params: dict, dtype) -> dict:
    """{module path: views} for every MoE layer ({"up_proj": E x [D, F], "down_proj": E x [F, D]}) and every
    Mamba layer ({"in_proj": column blocks of [D, 2*inner + 2*G*N + heads]}) of `params`, in the compute `dtype`."""
    def walk(tree):
        if not isinstance(tree, dict):
            return {}
        up, down = tree.get("up_proj"), tree.get("down_proj")
        if getattr(up, "ndim", 0) == 3 and getattr(down, "ndim", 0) == 3:
            return {name: tuple(w[e].astype(dtype) for e in range(w.shape[0]))
                    for name, w in (("up_proj", up), ("down_proj", down))}
        if all(isinstance(tree.get(name), dict) and "kernel" in tree[name] for name in MAMBA_INPUTS):
            fused = jnp.concatenate([tree[name]["kernel"].astype(dtype) for name in MAMBA_INPUTS], axis=1)
            return {"in_proj": column_blocks(fused)}
        return {key: sub for key, sub in ((k, walk(v)) for k, v in tree.items()) if sub}

    return walk(params)


__all__ = ["DECODE_VIEWS", "GEMV_BLOCK_ELEMENTS", "MAMBA_INPUTS", "column_blocks", "decode_views"]

"""Weight views for cached decoding on the CPU, built once per decode call and read by every step of its loop.

A decode step multiplies one token per sequence by each weight, so it is bound by reading the weights and by the
number of products it launches. Two layouts of the stored parameters cost a decode step there:
- a MoE layer's experts are stacked [E, ...]; XLA:CPU cannot feed a product from a slice without a copy, so a
  step would copy its routed experts out of the stack (a fifth of a `small` decode step's op time). The views
  hold every expert as its own array, and the step picks its experts' arrays with `lax.switch` (moe.py);
- a Mamba layer's input projection is five arrays (z, x, B, C, dt: each an elastic prefix, mamba2.py); the view
  concatenates them into transformers' fused in_proj [embed, z|x|B|C|dt], one product per step instead of five
  (about 15% of a Mamba layer's decode time on `small`).
The views are one more copy of those weights for the length of the call. They are the variable collection
`DECODE_VIEWS`, keyed by module path like the parameters.
"""

from __future__ import annotations

DECODE_VIEWS = "decode_views"
MAMBA_INPUTS = ("in_z", "in_x", "in_B", "in_C", "in_dt")  # transformers' in_proj order


def decode_views(params: dict, dtype) -> dict:
    """{module path: views} for every MoE layer ({"up_proj": E x [D, F], "down_proj": E x [F, D]}) and every
    Mamba layer ({"in_proj": [D, 2*inner + 2*G*N + heads]}) of `params`, cast to the compute `dtype`."""
    import jax.numpy as jnp

    def walk(tree):
        if not isinstance(tree, dict):
            return {}
        up, down = tree.get("up_proj"), tree.get("down_proj")
        if getattr(up, "ndim", 0) == 3 and getattr(down, "ndim", 0) == 3:
            return {name: tuple(w[e].astype(dtype) for e in range(w.shape[0]))
                    for name, w in (("up_proj", up), ("down_proj", down))}
        if all(isinstance(tree.get(name), dict) and "kernel" in tree[name] for name in MAMBA_INPUTS):
            return {"in_proj": jnp.concatenate([tree[name]["kernel"].astype(dtype) for name in MAMBA_INPUTS], axis=1)}
        return {key: sub for key, sub in ((k, walk(v)) for k, v in tree.items()) if sub}

    return walk(params)


__all__ = ["DECODE_VIEWS", "MAMBA_INPUTS", "decode_views"]

"""The Mamba-2 mixer of Nemotron-H's `M` layers, as transformers' NemotronHMamba2Mixer computes it.

transformers fuses the input projection ([z | x | B | C | dt]) and the convolution ([x | B | C]); here each
part is its own array so that the elastic axes (heads, ranked within B/C groups) are plain prefixes of
each array; the in_proj parts share one Hugging Face name in their declarations (`mamba_declarations`), so
conversion concatenates and splits them.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.kernels.ssd import ssd, ssd_decode_step
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.cache import CONV, SSM
from elastic_jax.model.declare import (
    HF,
    ParamDecl,
    axis,
    by_name,
    concat,
    declare,
    declared_param,
    dim,
    kernel,
    linear,
    linears,
)
from elastic_jax.model.decode_views import DECODE_VIEWS, MAMBA_INPUTS
from elastic_jax.model.masks import NO_LAYER_MASKS, LayerMasks
from elastic_jax.model.norms import GatedGroupRMSNorm


def causal_depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, state: jax.Array,
                          segment_ids: jax.Array | None = None) -> jax.Array:
    """y[t] = bias + sum_k kernel[k] * xs[t + k] over xs = concat(state, x); state holds the K-1 previous inputs.

    `segment_ids` [batch, length] (optional, packed documents): a tap that would read another document's input
    reads zero instead, as at the start of a sequence (the state counts as part of the first document).
    """
    width = kernel.shape[0]
    xs = jnp.concatenate([state.astype(x.dtype), x], axis=1)
    length = x.shape[1]
    if segment_ids is None:
        out = sum(xs[:, k:k + length] * kernel[k].astype(x.dtype) for k in range(width))
        return out + bias.astype(x.dtype)
    seg = jnp.concatenate([jnp.repeat(segment_ids[:, :1], width - 1, axis=1), segment_ids], axis=1)
    same = [(seg[:, k:k + length] == segment_ids)[..., None] for k in range(width)]
    out = sum(jnp.where(same[k], xs[:, k:k + length], 0) * kernel[k].astype(x.dtype) for k in range(width))
    return out + bias.astype(x.dtype)


def conv_windows(xs: jax.Array, width: int, length: int) -> jax.Array:
    """The conv state after each of the last `length` inputs of xs [batch, K-1 + length, channels] (the previous
    state followed by the new inputs): [batch, length, K-1, channels]."""
    return jnp.stack([xs[:, t + 1:t + width] for t in range(length)], axis=1)


def ssd_steps(state: jax.Array, x: jax.Array, dt: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array,
              d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The SSM recurrence one token at a time (each step the one-token decode step), keeping every state: state
    [batch, H, P, N]; x [batch, L, H, P]; dt [batch, L, H]; b, c [batch, L, G, N] -> (y [batch, L, H, P], states
    [batch, L, H, P, N], the state after each token)."""
    def step(s, inputs):
        xt, dtt, bt, ct = inputs
        y, s = ssd_decode_step(s, xt, dtt, a, bt, ct, d)
        return s, (y, s)

    steps = [jnp.moveaxis(v, 1, 0) for v in (x, dt, b, c)]
    _, (y, states) = jax.lax.scan(step, state, steps)
    return jnp.moveaxis(y, 0, 1), jnp.moveaxis(states, 0, 1)


def _dt_bias_init(min_dt: float, max_dt: float, floor: float):
    """transformers' init: dt ~ log-uniform(min, max), clamped at `floor`, stored as softplus^-1(dt)."""
    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, dtype)
        dt = jnp.exp(u * (math.log(max_dt) - math.log(min_dt)) + math.log(min_dt))
        dt = jnp.maximum(dt, floor)
        return dt + jnp.log(-jnp.expm1(-dt))
    return init


def _uniform_init(bound: float):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


HEADS = ("mamba_groups", "mamba_group_heads")  # heads are B/C-group major
INNER = (*HEADS, "mamba_head_dim")
BC = ("mamba_groups", "ssm_state")


def mamba_declarations(sizes: dict[str, int]) -> tuple[ParamDecl, ...]:
    """Every parameter of a Mamba-2 mixer. transformers fuses in_proj ([z | x | B | C | dt], the shared HF name
    concatenates them) and the convolution ([x | B | C]); here each in_proj part is its own array so that heads
    are plain prefixes within their B/C group."""
    embed, inner, heads = axis("embed"), dim("mamba_inner", *INNER), dim("mamba_heads", *HEADS)
    conv = concat(None, INNER, BC, BC)  # a split of [x | B | C] would not align with heads
    proj = "in_proj.weight"
    return (
        kernel("in_z", embed, inner, sizes, proj),
        kernel("in_x", embed, inner, sizes, proj),
        kernel("in_B", embed, dim(None, *BC), sizes, proj),
        kernel("in_C", embed, dim(None, *BC), sizes, proj),
        kernel("in_dt", embed, heads, sizes, proj),
        declare("conv_kernel", (dim(None, "conv_width"), conv), sizes, HF("conv1d.weight", "conv1d")),
        declare("conv_bias", (conv,), sizes, HF("conv1d.bias", "vector")),
        declare("dt_bias", (heads,), sizes, HF("dt_bias", "vector")),
        declare("A_log", (heads,), sizes, HF("A_log", "vector")),
        declare("D", (heads,), sizes, HF("D", "vector")),
        declare("norm/weight", (inner,), sizes, HF("norm.weight", "vector")),
        kernel("out_proj", inner, embed, sizes),
    )


class Mamba2Mixer(nn.Module):
    """in_proj -> causal depthwise conv + SiLU on [x|B|C] -> SSD scan (+ D skip) -> gated group RMSNorm -> out_proj.

    Cache (optional, model/cache.py): CONV [batch, K-1, d_inner + 2*G*N] and SSM [batch, H, P, N] float32.
    """

    hidden_size: int
    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int
    conv_kernel: int
    chunk_size: int
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    eps: float = 1e-5
    num_layers: int = 1
    ssd_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    init_std: float = 0.02
    target: CompileTarget = CompileTarget()

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer: int, *, dtype: jnp.dtype = jnp.float32, ssd_impl: str = "auto",
                    **module: Any) -> Mamba2Mixer:
        """The mixer of `layer` (its possibly per-layer head count)."""
        return cls(hidden_size=cfg.hidden_size, num_heads=cfg.mamba_heads(layer), head_dim=cfg.mamba_head_dim,
                   n_groups=cfg.mamba_n_groups, state_size=cfg.ssm_state_size, conv_kernel=cfg.conv_kernel,
                   chunk_size=cfg.chunk_size, time_step_limit=cfg.time_step_limit, time_step_min=cfg.time_step_min,
                   time_step_max=cfg.time_step_max, time_step_floor=cfg.time_step_floor, eps=cfg.layer_norm_epsilon,
                   num_layers=cfg.num_layers if cfg.rescale_prenorm_residual else 1, ssd_impl=ssd_impl, dtype=dtype,
                   init_std=cfg.initializer_range, **module)

    def declarations(self) -> tuple[ParamDecl, ...]:
        return mamba_declarations({"embed": self.hidden_size, "mamba_groups": self.n_groups,
                                   "mamba_group_heads": self.num_heads // self.n_groups,
                                   "mamba_head_dim": self.head_dim, "ssm_state": self.state_size,
                                   "conv_width": self.conv_kernel})

    @nn.compact
    def __call__(self, h: jax.Array, cache: dict | None = None, pos: jax.Array | None = None,
                 masks: LayerMasks = NO_LAYER_MASKS, segment_ids: jax.Array | None = None):
        """`masks.mamba_heads` [num_heads] (optional) scales each head's output; the gated norm averages over kept
        heads. `pos` is unused (the state carries the position). `segment_ids` [batch, length] (optional, packed
        documents): the convolution and the SSM state restart at each document start."""
        head_mask = masks.mamba_heads
        batch, length, _ = h.shape
        heads, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.state_size
        d_inner = heads * p
        conv_dim = d_inner + 2 * g * n
        decl, init = by_name(self.declarations()), nn.initializers.normal(self.init_std)

        if cache is not None and length == 1 and self.target.views:
            # cached decoding: the five input products as one, over the fused view (decode_views.py)
            blocks = self.get_variable(DECODE_VIEWS, "in_proj")
            fused = jnp.concatenate([h.astype(w.dtype) @ w for w in blocks], axis=-1)
            z, xbc, dt_raw = jnp.split(fused, [d_inner, 2 * d_inner + 2 * g * n], axis=-1)
        else:
            z, x_in, b_in, c_in, dt_raw = linears(self, [decl[f"{name}/kernel"] for name in MAMBA_INPUTS], h,
                                                  self.dtype, init)
            xbc = jnp.concatenate([x_in, b_in, c_in], axis=-1)

        bound = 1.0 / math.sqrt(self.conv_kernel)  # PyTorch's default Conv1d init for a depthwise conv
        conv_w = declared_param(self, decl["conv_kernel"], _uniform_init(bound))
        conv_b = declared_param(self, decl["conv_bias"], _uniform_init(bound))
        dt_bias = declared_param(self, decl["dt_bias"],
                                 _dt_bias_init(self.time_step_min, self.time_step_max, self.time_step_floor))
        a_log = declared_param(self, decl["A_log"], lambda k, s, d=jnp.float32: jnp.log(jnp.arange(1, s[0] + 1,
                                                                                                  dtype=d)))
        d_skip = declared_param(self, decl["D"], nn.initializers.ones)

        conv_state = (cache[CONV] if cache is not None
                      else jnp.zeros((batch, self.conv_kernel - 1, conv_dim), xbc.dtype))
        xs_all = jnp.concatenate([conv_state.astype(xbc.dtype), xbc], axis=1)
        new_conv_state = xs_all[:, -(self.conv_kernel - 1):] if self.conv_kernel > 1 else conv_state
        xbc = jax.nn.silu(causal_depthwise_conv(xbc, conv_w, conv_b, conv_state, segment_ids))
        x, b_, c_ = jnp.split(xbc, [d_inner, d_inner + g * n], axis=-1)

        dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + dt_bias)
        lo, hi = self.time_step_limit
        dt = jnp.clip(dt, lo, hi if math.isfinite(hi) else None)
        a = -jnp.exp(a_log.astype(jnp.float32))

        x = x.reshape(batch, length, heads, p)
        b_ = b_.reshape(batch, length, g, n)
        c_ = c_.reshape(batch, length, g, n)
        kernels = self.target.row_kernels(h) if cache is not None and x.dtype == jnp.float32 else None
        if cache is not None and self.target.step_states:  # every position's state, for a caller to return to
            y, ssm = ssd_steps(cache[SSM], x, dt, a, b_, c_, d_skip)
            new_conv_state = conv_windows(xs_all, self.conv_kernel, length)
        elif kernels is not None and length == 1:  # batch 1 on the decode kernels: the state updated in place
            y, ssm = kernels.ssm_step(cache[SSM], x[0, 0], dt[0, 0], a, b_[0, 0], c_[0, 0], d_skip)
            y = y[None, None]
        elif cache is not None and length == 1:
            y, ssm = ssd_decode_step(cache[SSM], x[:, 0], dt[:, 0], a, b_[:, 0], c_[:, 0], d_skip)
            y = y[:, None]
        elif cache is not None:
            y, ssm = ssd(x, dt, a, b_, c_, D=d_skip, chunk_size=self.chunk_size, initial_state=cache[SSM],
                         return_final_state=True, impl=self.ssd_impl, seq_idx=segment_ids,
                         platform=self.target.platform)
        else:
            y = ssd(x, dt, a, b_, c_, D=d_skip, chunk_size=self.chunk_size, impl=self.ssd_impl, seq_idx=segment_ids,
                    platform=self.target.platform)
        new_cache = None if cache is None else {CONV: new_conv_state, SSM: ssm}
        y = y.reshape(batch, length, d_inner)
        channel_mask = None if head_mask is None else jnp.repeat(head_mask, p, total_repeat_length=d_inner)
        norm = GatedGroupRMSNorm(dim=decl["norm/weight"].shape[0], groups=g, eps=self.eps, dtype=self.dtype,
                                 name="norm")
        y = norm(y, z, channel_mask)
        # transformers rescales out_proj at init: kaiming-uniform(a=sqrt 5) / sqrt(num_layers).
        out_bound = 1.0 / math.sqrt(d_inner) / math.sqrt(self.num_layers)
        out = linear(decl["out_proj/kernel"], self.dtype, _uniform_init(out_bound), self.target, "output")(y)
        return out, new_cache


__all__ = ["Mamba2Mixer", "causal_depthwise_conv", "conv_windows", "mamba_declarations", "ssd_steps"]

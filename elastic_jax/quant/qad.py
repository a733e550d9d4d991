"""Fake quantisation for quantisation-aware distillation (QAD): every budget of an elastic checkpoint trained at once
through fake-quantised weights, distilling from the frozen unquantised model (METHOD §7: how NVIDIA made its NVFP4
elastic checkpoints).

Fake quantisation. The student's forward uses `dequantise(quantise(w))` of every weight `quantize_params` would
quantise (same exclusions, same per-tensor scales, the fused Mamba in_proj parts sharing one scale), computed with
the exact encoders of quant/nvfp4.py and quant/fp8.py (`encode_jax` / `decode_jax` give the bits `encode` gives), so
the forward equals the quantised-inference path bit for bit: that path dequantises the quantised parent to float32
inside the jit and then cuts the budget (inference/programs.py), and so does `student_logits` here. A checkpoint
trained this way is quantised afterwards by the same rules (`elastic-jax quantize`, `eval --quant`,
`export-hf --quant`) into the same formats.

Gradients: a straight-through estimator, the identity: d fake_quantize(w) / dw = 1 everywhere, and no gradient
reaches the scales. It is not masked past saturation because the scales follow the weights (recomputed from the
amax at every step), so no weight lies past the representable range except by rounding: in NVFP4 the E4M3 rounding
of a block scale can leave a block's largest values up to one E4M3 step above 6, where they saturate; masking them
would freeze exactly the weights that set their block's scale. In FP8 with a per-tensor scale from the amax nothing
saturates at all.

The QAD loss built on it is a training step's loss: elastic_jax/train/qad_loss.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.model.declare import check_declared, unflatten
from elastic_jax.model.hybrid import model_declarations
from elastic_jax.quant import fp8, nvfp4
from elastic_jax.quant.params import FORMATS, quantised_names, shared_scale_groups


def _round_trip(ws: tuple[jax.Array, ...], scales: tuple[jax.Array, ...], axes: tuple[int, ...], fmt: str
                ) -> tuple[jax.Array, ...]:
    """decode(encode(w)) in float32 of each weight under its per-tensor scale, in w's dtype. All weights go through
    one encode / decode over their concatenated blocks (FP8: values), each with its own scale: the same elementwise
    arithmetic as `encode_jax` / `decode_jax` weight by weight, but one copy of it in the program (compiling the
    exact float32 division once per weight took minutes)."""
    if fmt == "nvfp4":
        moved = [jnp.moveaxis(jnp.asarray(w, jnp.float32), a, -1) for w, a in zip(ws, axes)]
        for a, m in zip(axes, moved):
            if m.shape[-1] % nvfp4.BLOCK:
                raise ValueError(f"nvfp4: a weight's input axis (axis {a}, size {m.shape[-1]}) is not a multiple of "
                                 f"{nvfp4.BLOCK}")
        flat = [m.reshape(-1, nvfp4.BLOCK) for m in moved]
        s2 = jnp.concatenate([jnp.full((f.shape[0],), s, jnp.float32) for f, s in zip(flat, scales)])
        codes, block_scale = nvfp4.encode_blocks(jnp.concatenate(flat), s2, jnp)
        values = nvfp4.decode_blocks(codes, block_scale, s2, jnp)
    else:
        moved = [jnp.asarray(w, jnp.float32) for w in ws]
        flat = [m.reshape(-1) for m in moved]
        per = jnp.concatenate([jnp.full(f.shape, s, jnp.float32) for f, s in zip(flat, scales)])
        values = fp8.cast(jnp.concatenate(flat), per, jnp).astype(jnp.float32) * per
    out, start = [], 0
    for w, a, m, f in zip(ws, axes, moved, flat):
        part = values[start:start + f.shape[0]].reshape(m.shape)
        start += f.shape[0]
        out.append((jnp.moveaxis(part, -1, a) if fmt == "nvfp4" else part).astype(w.dtype))
    return tuple(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def fake_quantize_many(ws: tuple[jax.Array, ...], scales: tuple[jax.Array, ...], axes: tuple[int, ...], fmt: str
                       ) -> tuple[jax.Array, ...]:
    """dequantise(quantise(w)) of each weight along its input axis in `fmt` ("nvfp4": its scale is the global
    scale_2; "fp8": the per-tensor weight_scale); gradient: the identity to each weight, zero to the scales (see
    the module docstring)."""
    return _round_trip(ws, scales, axes, fmt)


def _fake_quantize_fwd(ws, scales, axes, fmt):
    return _round_trip(ws, scales, axes, fmt), scales


def _fake_quantize_bwd(axes, fmt, scales, g):
    return tuple(g), tuple(jnp.zeros_like(s) for s in scales)


fake_quantize_many.defvjp(_fake_quantize_fwd, _fake_quantize_bwd)


def fake_quantize(w: jax.Array, scale: jax.Array, axis: int, fmt: str) -> jax.Array:
    """`fake_quantize_many` of one weight."""
    return fake_quantize_many((w,), (jnp.asarray(scale, jnp.float32),), (axis % jnp.ndim(w),), fmt)[0]


def tensor_scale(amax: jax.Array, fmt: str) -> jax.Array:
    """The per-tensor scale of a weight whose amax is `amax` (elementwise over an array of amaxes): NVFP4's
    s2 = amax / (6 * 448), FP8's amax / 448, 1.0 for a zero amax; float32 as quant/nvfp4.py and fp8.py compute it."""
    return (nvfp4.scale_from_amax if fmt == "nvfp4" else fp8.scale_from_amax)(amax, jnp)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"quantisation format {fmt!r}; allowed: {list(FORMATS)}")


def fake_quantize_params(params: Any, cfg: ModelConfig, fmt: str, excluded: Iterable[str] | None = None) -> dict:
    """`params` with every weight `quantize_params(params, cfg, fmt, excluded)` quantises replaced by its
    straight-through fake quantisation (jittable): the forward is `dequantize_params(quantize_params(...),
    float32)` bit for bit for float32 weights."""
    check_format(fmt)
    decls = {d.name: d for d in model_declarations(cfg)}
    leaves = check_declared(params, decls.values(), "fake_quantize_params")
    names = quantised_names(cfg, excluded)
    if not names:
        return unflatten(dict(leaves))
    amax = {n: jnp.max(jnp.abs(jnp.asarray(leaves[n], jnp.float32))) for n in names}
    for group in shared_scale_groups(cfg, names, fmt):  # one scale for the parts of one Hugging Face tensor
        shared = jnp.max(jnp.stack([amax[d.name] for d in group]))
        amax.update({d.name: shared for d in group})
    scales = jax.lax.stop_gradient(tensor_scale(jnp.stack([amax[n] for n in names]), fmt))  # one division for all
    scales = tuple(scales[i] for i in range(len(names)))
    done = fake_quantize_many(tuple(leaves[n] for n in names), scales, tuple(decls[n].quant_in for n in names), fmt)
    return unflatten({**leaves, **dict(zip(names, done))})


__all__ = ["check_format", "fake_quantize", "fake_quantize_many", "fake_quantize_params", "tensor_scale"]

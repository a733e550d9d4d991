"""The bias-free Linear every projection uses, with a backward that keeps XLA's CPU weight gradients fast.

The weight gradient of y = x @ W contracts over tokens: dW = x^T @ dy. XLA's CPU backend feeds its matrix
multiply with the token axis minor, so one operand gets transposed, and XLA fuses whatever elementwise chain
produced that operand into the transposing copy, which then reads memory with a large stride (7-10 ms per
[1024, 1024] array instead of about 0.2 ms). So the backward picks the operand to transpose, behind an
optimisation barrier so that XLA cannot fold the transpose back into the product:
- `grad_transpose="input"` (input projections): x is the block's normed input, while dy is usually an
  elementwise chain (a gate's derivative, the sum of convolution taps); x^T is taken. Made the Mamba layer's
  forward + backward about 20% faster on CPU.
- `grad_transpose="output"` (output projections: Mamba's out_proj, the MLPs' down_proj, attention's o_proj):
  x is a computed activation (the gated norm, relu^2, the attention output) that XLA recomputes inside the
  transpose, while dy is the residual stream's gradient, a plain array; dW = (dy^T @ x)^T. Made the joint
  elastic step of `small` 5-8% faster.
The values are the same products summed in the same order. Programs compiled for GPU or TPU use the plain autodiff
rule: the choice follows the module's `CompileTarget` (kernels/target.py), never the host the program is traced on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.kernels.target import CompileTarget

GRAD_TRANSPOSES = ("input", "output")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_matmul(x: jax.Array, w: jax.Array, transpose: str) -> jax.Array:
    return x @ w


def _cpu_matmul_fwd(x: jax.Array, w: jax.Array, transpose: str):
    return x @ w, (x, w)


def _cpu_matmul_bwd(transpose: str, residuals, dy: jax.Array):
    x, w = residuals
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if transpose == "input":
        dw = jax.lax.optimization_barrier(x2.T) @ dy2  # [in, tokens] materialised as such
    else:
        dw = (jax.lax.optimization_barrier(dy2.T) @ x2).T  # [out, tokens] materialised as such
    return (dy @ w.T).astype(x.dtype), dw.astype(w.dtype)


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def matmul(x: jax.Array, w: jax.Array, grad_transpose: str = "input", *, cpu_backward: bool) -> jax.Array:
    """x [..., in] @ w [in, out]; `cpu_backward`: with the CPU-friendly weight gradient (see the module doc for
    `grad_transpose`), else plain autodiff's."""
    if grad_transpose not in GRAD_TRANSPOSES:
        raise ValueError(f"grad_transpose must be one of {GRAD_TRANSPOSES}, got {grad_transpose!r}")
    return _cpu_matmul(x, w, grad_transpose) if cpu_backward else x @ w


class Linear(nn.Module):
    """A bias-free Linear: float32 `kernel` [in, out], computing in `dtype` (flax's Dense layout and names), in the
    forms of its `target` (the CPU's weight gradient, a decode kernel for one row)."""

    features: int
    dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    grad_transpose: str = "input"
    target: CompileTarget = CompileTarget()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        kernels = self.target.row_kernels(x, self.dtype)
        if kernels is not None:  # batch-1 decoding on the decode kernels
            return kernels.products(x, [kernel])[0]
        return matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.grad_transpose,
                      cpu_backward=self.target.cpu_backward)


__all__ = ["GRAD_TRANSPOSES", "Linear", "matmul"]

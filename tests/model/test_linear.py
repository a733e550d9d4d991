"""The Linear's hand-written CPU backward gives autodiff's gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.model.linear import Linear, matmul


@pytest.mark.parametrize("grad_transpose", ["input", "output"])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_gradients_match_autodiff(dtype, tol, grad_transpose):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (3, 17, 24))
    w = jax.random.normal(kw, (24, 40)) * 0.2
    probe = jax.random.normal(kg, (3, 17, 40))

    def loss(fn, x, w):  # an elementwise chain on the output, as a gate would put on it
        y = fn(x.astype(dtype), w.astype(dtype)).astype(jnp.float32)
        return jnp.sum(jax.nn.silu(y) * probe)

    ours = jax.jit(jax.grad(lambda x, w: loss(lambda a, b: matmul(a, b, grad_transpose, cpu_backward=True), x, w),
                            argnums=(0, 1)))(x, w)
    plain = jax.jit(jax.grad(lambda x, w: loss(jnp.matmul, x, w), argnums=(0, 1)))(x, w)
    for a, b in zip(ours, plain, strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))


def test_module_keeps_flax_dense_layout():
    x = jnp.ones((2, 5, 8))
    params = Linear(3, jnp.bfloat16).init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == {"params": {"kernel": ((8, 3), jnp.float32)}}
    assert Linear(3, jnp.bfloat16).apply(params, x).dtype == jnp.bfloat16


def test_unknown_grad_transpose_is_refused():
    with pytest.raises(ValueError, match="grad_transpose must be one of"):
        matmul(jnp.ones((2, 3)), jnp.ones((3, 4)), "weights", cpu_backward=True)

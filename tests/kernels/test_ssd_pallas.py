"""The Pallas SSD kernels for GPU (Triton) and TPU (Mosaic): forward and gradient lower for their platform on any
host, the chunk-parallel GPU kernels (forward and backward) match the reference in interpret mode, and compiled runs
match it where such a device is present."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elastic_jax.kernels.ssd import pallas_gpu, ssd
from tests.kernels.ssd_helpers import documents, make_inputs, outputs_and_grads, rel_err, run

ON_GPU = jax.default_backend() == "gpu"
ON_TPU = jax.default_backend() == "tpu"


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _abstract_args(dtype, b=1, seqlen=200, h=4, p=64, g=2, n=128):
    f32 = jnp.float32
    shapes = [((b, seqlen, h, p), dtype), ((b, seqlen, h), f32), ((h,), f32), ((b, seqlen, g, n), dtype)]
    shapes += [((b, seqlen, g, n), dtype), ((h,), f32), ((b, h, p, n), f32)]
    return [jax.ShapeDtypeStruct(shape, dt) for shape, dt in shapes]


def _lower_fwd_and_grad(fn, chunk_size: int, platform: str, dtype, documents: bool = False) -> str:
    """Lower forward and gradient for `platform` without a device of that kind (catches kernel lowering errors);
    `documents` adds seq_idx (packed documents)."""
    args = _abstract_args(dtype)
    if documents:
        seq_idx = jnp.asarray(np.repeat(np.arange(4, dtype=np.int32), 50)[None])  # starts every 50 steps
        fn = functools.partial(fn, seq_idx=seq_idx)
    fwd = jax.jit(lambda *a: fn(*a, chunk_size=chunk_size))
    loss = lambda *a: jnp.sum(fn(*a, chunk_size=chunk_size)[0].astype(jnp.float32))
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(7))))
    # On a machine of that platform lower for its own device (Triton lowering then reads the real GPU's info).
    platforms = {} if jax.default_backend() == {"cuda": "gpu"}.get(platform, platform) else {
        "lowering_platforms": (platform,)}
    grad.trace(*args).lower(**platforms)
    return fwd.trace(*args).lower(**platforms).as_text()


@pytest.mark.parametrize("dtype,documents", [(jnp.float32, False), (jnp.bfloat16, False), (jnp.float32, True)])
def test_pallas_gpu_lowers_to_triton(dtype, documents):
    from elastic_jax.kernels.ssd.pallas_gpu import ssd_pallas_gpu

    assert "triton" in _lower_fwd_and_grad(ssd_pallas_gpu, 64, "cuda", dtype, documents)


@pytest.mark.parametrize("dtype,documents", [(jnp.float32, False), (jnp.bfloat16, False), (jnp.float32, True)])
def test_pallas_tpu_lowers_to_mosaic(dtype, documents, monkeypatch):
    from elastic_jax.kernels.ssd.pallas_tpu import ssd_pallas_tpu

    if not ON_TPU:  # private: pretend to target a TPU v5e for lowering only (the module moved in newer jax)
        for name in ("jax._src.pallas.mosaic.tpu_info", "jax._src.tpu_info"):
            tpu_info = _try_import(name)
            if tpu_info is not None:
                monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5 lite")
                monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)
    assert "tpu_custom_call" in _lower_fwd_and_grad(ssd_pallas_tpu, 128, "tpu", dtype, documents)


def test_pallas_gpu_interpret_values_and_gradients_across_chunks_and_documents():
    """Four kernel chunks (61 steps, chunk 16), two heads of one group, D and an initial state; row 0 has a document
    over three chunks, then one starting on a chunk's first step and one mid-chunk; row 1 is one document. Values and
    gradients of every input (the final state's cotangent included) equal the step-by-step reference."""
    args = make_inputs(21, 2, 61, 2, 16, 1, 16)
    seq_idx = documents(61, (5, 48, 53), ())
    want = outputs_and_grads("reference", args, 16, seq_idx)
    got = outputs_and_grads("pallas_gpu_interpret", args, 16, seq_idx)
    assert rel_err(got[0], want[0]) < 1e-4 and rel_err(got[1], want[1]) < 1e-4
    assert set(got[2]) == {"x", "dt", "A", "B", "C", "D", "initial_state"}
    for name in want[2]:
        assert rel_err(got[2][name], want[2][name]) < 1e-4, name


def test_pallas_gpu_gradient_runs_the_pallas_backward():
    """The gradient is the chunk-parallel Pallas backward (its three kernels), not a recomputed XLA VJP."""
    args = make_inputs(22, 1, 40, 2, 16, 1, 16)
    loss = lambda a: jnp.sum(ssd(**a, chunk_size=16, impl="pallas_gpu_interpret"))  # noqa: E731
    text = str(jax.make_jaxpr(jax.grad(loss))(args))
    for name in ("ssd_chunk_state_bwd_gpu", "ssd_state_passing_bwd_gpu", "ssd_chunk_bwd_gpu"):
        assert name in text, name
    assert text.count("pallas_call[") == 6  # three forward kernels and three backward ones, nothing else


def test_pallas_gpu_kernel_block_fits_shared_memory():
    """A 128-row chunk at the Nemotron head shape (p=64, n=128) runs as 64-row kernel chunks; smaller ones as is."""
    assert pallas_gpu.kernel_block(128, 64, 128) == 64
    assert pallas_gpu.kernel_block(64, 64, 64) == 64
    assert pallas_gpu.kernel_block(16, 256, 256) == 16


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("dtype,documents_on", [(jnp.float32, False), (jnp.bfloat16, False), (jnp.float32, True)])
def test_pallas_gpu_compiled(dtype, documents_on):
    args = make_inputs(12, 2, 200, 4, 64, 2, 64, dtype=dtype)
    args["initial_state"] = args["initial_state"].astype(jnp.float32)
    seq_idx = documents(200, (30, 94, 164), (64,)) if documents_on else None
    want = outputs_and_grads("reference", args, 64, seq_idx)
    got = outputs_and_grads("pallas_gpu", args, 64, seq_idx)
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    assert rel_err(got[0], want[0]) < tol and rel_err(got[1], want[1]) < tol
    for name in want[2]:
        assert rel_err(got[2][name], want[2][name]) < 10 * tol, name


@pytest.mark.tpu
@pytest.mark.skipif(not ON_TPU, reason="needs a TPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_tpu_compiled(dtype):
    args = make_inputs(13, 2, 300, 4, 64, 2, 128, dtype=dtype)
    args["initial_state"] = args["initial_state"].astype(jnp.float32)
    y_ref, s_ref = run(args, "reference", 128)
    y, s = run(args, "pallas_tpu", 128)
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    assert rel_err(y, y_ref) < tol and rel_err(s, s_ref) < tol

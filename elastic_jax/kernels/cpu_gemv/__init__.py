"""Batch-1 decode products on the CPU as XLA FFI kernels (gemv.cc), built on first use."""

from elastic_jax.kernels.cpu_gemv.api import KERNELS, attention, available, expert_products, ssm_step, vector_products

__all__ = ["KERNELS", "attention", "available", "expert_products", "ssm_step", "vector_products"]

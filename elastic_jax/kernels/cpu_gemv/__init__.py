"""Batch-1 decode products on the CPU as XLA FFI kernels (gemv.cc), built on first use."""

from elastic_jax.kernels.cpu_gemv.api import (
                                              active,
                                              attention,
                                              available,
                                              decode_products,
                                              expert_products,
                                              ssm_step,
                                              vector_products,
)

__all__ = ["active", "attention", "available", "decode_products", "expert_products", "ssm_step", "vector_products"]

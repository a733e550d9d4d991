"""Mamba-2 selective state-space (SSD) scan: reference, chunked XLA and Pallas TPU/GPU implementations."""

from elastic_jax.kernels.ssd.api import IMPLS, ssd, ssd_decode_step

__all__ = ["IMPLS", "ssd", "ssd_decode_step"]

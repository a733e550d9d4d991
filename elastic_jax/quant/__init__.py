"""Quantised weights: NVFP4 and FP8 (E4M3) encoders in NVIDIA Model-Optimizer's arithmetic."""

from elastic_jax.quant.fp8 import FP8Array
from elastic_jax.quant.nvfp4 import NVFP4Array

__all__ = ["FP8Array", "NVFP4Array"]

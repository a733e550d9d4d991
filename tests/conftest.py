"""Shared test settings: float32 matmuls at full precision so parity tolerances mean what they say."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

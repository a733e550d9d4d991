"""The platform the SSD scan is being compiled for: the default backend, or the one `compiling_for` names.

Compile-only plans (elastic_jax/plan.py) trace on a CPU host for TPU or GPU targets; "auto" must then pick the
target's implementation (the Pallas TPU kernel for a TPU topology), not the host's.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("elastic_jax_ssd_target", default=None)


def backend() -> str:
    """'tpu', 'gpu' or 'cpu': the target of the program being traced."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Trace SSD calls as if on `platform` ('tpu', 'gpu' or 'cpu') inside the block."""
    if platform not in ("tpu", "gpu", "cpu"):
        raise ValueError(f"compiling_for: platform must be 'tpu', 'gpu' or 'cpu', got {platform!r}")
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)

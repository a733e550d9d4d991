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
_HOST_EXPERTS: contextvars.ContextVar[bool] = contextvars.ContextVar("elastic_jax_host_experts", default=False)


def backend() -> str:
    """'tpu', 'gpu' or 'cpu': the target of the program being traced."""
    return _TARGET.get() or jax.default_backend()


def host_experts() -> bool:
    """True while a plan compiles a GPU program on CPU devices: MoE layers then use the CPU expert loop, whose
    memory the CPU compiler sizes as the routed rows (as a GPU grouped GEMM holds them), where `ragged_dot`
    would lower to a dense product over every expert."""
    return _HOST_EXPERTS.get()


@contextlib.contextmanager
def compiling_for(platform: str, *, on_host_devices: bool = False) -> Iterator[None]:
    """Trace SSD calls as if on `platform` ('tpu', 'gpu' or 'cpu') inside the block; `on_host_devices`: the
    program is compiled for CPU devices standing in for the target (see `host_experts`)."""
    if platform not in ("tpu", "gpu", "cpu"):
        raise ValueError(f"compiling_for: platform must be 'tpu', 'gpu' or 'cpu', got {platform!r}")
    token, host = _TARGET.set(platform), _HOST_EXPERTS.set(on_host_devices)
    try:
        yield
    finally:
        _TARGET.reset(token)
        _HOST_EXPERTS.reset(host)

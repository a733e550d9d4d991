"""Process-wide settings for a process that elastic_jax owns (the command line, a benchmark script).

A library must not change the process it is imported into (a notebook's, a server's), so `import elastic_jax` sets
nothing; a program that runs elastic_jax's work as its main job calls `tune_process()` once, first thing.
"""

from __future__ import annotations

from elastic_jax.host_allocator import tune_host_allocator
from elastic_jax.platforms import skip_absent_tpu


def tune_process() -> dict[str, object]:
    """Keep XLA:CPU's per-call buffers in the heap (glibc malloc, host_allocator.py) and keep jax away from an
    installed libtpu on a host without a TPU (platforms.py). Call it before jax starts a backend (the first array
    or device query); both respect the user's own settings. Returns what is in effect."""
    return {"host_allocator": tune_host_allocator(), "jax_platforms": skip_absent_tpu()}


__all__ = ["tune_process"]

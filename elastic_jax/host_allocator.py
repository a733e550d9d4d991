"""Keep XLA:CPU's per-call buffers in the heap instead of fresh mmaps (glibc only).

XLA:CPU allocates each executable's temporary buffer (180 MB for a `small` 4x512 prefill) on every call
and frees it afterwards. glibc serves an allocation that large from a worker thread's arena with a new
mmap, and returns memory above 128 KiB at the top of a heap to the kernel on free, so every call
page-faults its whole working set back in (about 80,000 faults and 15% of a prefill on 2 cores).

One arena, no mmaps and no trimming keep that memory in the process between calls, so the resident size
stays at its peak (`release_host_memory()` hands free pages back, e.g. after a checkpoint conversion). The
settings must be made before XLA starts its threads; they are process-wide, so importing elastic_jax never makes
them: the command line does, first thing (`elastic_jax.tune_process()`). Set ELASTIC_JAX_HOST_ALLOCATOR=default to
leave glibc's defaults alone; an allocator that is LD_PRELOADed (jemalloc, tcmalloc) or any MALLOC_* variable set by
the user is respected.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV_SWITCH = "ELASTIC_JAX_HOST_ALLOCATOR"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # from glibc's malloc.h

_applied: bool | None = None


def user_chose_allocator() -> bool:
    """True when the user already picked an allocator or glibc malloc settings through the environment."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return True
    return any(key.startswith("MALLOC_") for key in os.environ)


def tune_host_allocator() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "").lower() in ("default", "0", "off") or user_chose_allocator():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; all three or we report that nothing is guaranteed.
    # A trim threshold of -1 turns trimming off: any finite int (at most 2 GiB) is below the temporaries of an
    # elastic joint step, which then page-faulted back in on every call.
    ok = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, -1)]
    _applied = all(result == 1 for result in ok)
    return _applied


def in_effect() -> bool:
    """Whether this process runs under the settings (only after tune_host_allocator() applied them)."""
    return bool(_applied)


def release_host_memory() -> None:
    """Return the heap's free pages to the operating system (glibc malloc_trim; a no-op elsewhere)."""
    if _applied:
        ctypes.CDLL(None).malloc_trim(0)

"""Compiles gemv.cc and mixers.cc on first use into a per-machine cache and registers its XLA FFI targets.

The library is built with the host's C++ compiler (`CXX`, else g++ or c++) for this CPU (-march=native) against
the XLA FFI headers that jaxlib ships, once per (source, jax version, compiler, CPU): the cache key includes the
CPU's model and flags, so a home directory shared across different machines never loads a build for another CPU.
Without a compiler, or if the build fails, `library()` returns None and says why once in the log; callers then
keep XLA's own products.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("gemv.cc", "mixers.cc"))
TARGETS = {"elastic_jax_products": "EjProducts", "elastic_jax_experts": "EjExperts",
           "elastic_jax_attention": "EjAttention", "elastic_jax_ssm_step": "EjSsmStep"}
DISABLE_ENV = "ELASTIC_JAX_CPU_KERNELS"  # 0: never build or use them
THREADS_ENV = "ELASTIC_JAX_DECODE_THREADS"  # threads per product (default: the CPUs this process may use)
CACHE_ENV = "ELASTIC_JAX_CACHE"  # default ~/.cache/elastic_jax


def _cpu_identity() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [line for line in lines if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def default_threads() -> int:
    """ELASTIC_JAX_DECODE_THREADS, else the number of CPUs this process may run on."""
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _build(compiler: str, include: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}",
               *(str(source) for source in SOURCES), "-o", str(out), "-lpthread"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders (test workers) never see a partial file


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels with their FFI targets registered for the CPU, or None (disabled, or no build)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    if platform.machine() not in ("x86_64", "AMD64"):
        log.info("CPU decode kernels: built for x86-64 only (this is %s); XLA's products are used",
                 platform.machine())
        return None
    import jax
    import jax.ffi

    compiler = _compiler()
    if compiler is None:
        log.warning("CPU decode kernels: no C++ compiler (set CXX); XLA's products are used")
        return None
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    parts = [*(source.read_text() for source in SOURCES), jax.__version__, version, _cpu_identity()]
    key = hashlib.sha256("\n".join(parts).encode())
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "elastic_jax")
    target = cache / "kernels" / f"cpu_gemv-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            log.info("CPU decode kernels: compiling %s", target)
            _build(compiler, jax.ffi.include_dir(), target)
        lib = ctypes.cdll.LoadLibrary(str(target))
    except (OSError, RuntimeError) as err:
        log.warning("CPU decode kernels unavailable, XLA's products are used: %s", err)
        return None
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    lib.ej_set_threads(ctypes.c_int(default_threads()))
    return lib


def set_threads(threads: int) -> None:
    """Threads per product from the next call on (the library must be available)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the CPU decode kernels are not available (see the log)")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    lib.ej_set_threads(ctypes.c_int(threads))


__all__ = ["DISABLE_ENV", "THREADS_ENV", "default_threads", "library", "set_threads"]

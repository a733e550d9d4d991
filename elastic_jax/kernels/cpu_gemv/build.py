"""Compiles gemv.cc and mixers.cc into a per-machine cache and registers their XLA FFI targets, outside any trace.

`ensure_built()` does it once per process, at the first explicit use: a program calls it (or `available()`) before
tracing, and it refuses to compile while JAX is tracing; an install step may call it to fill the cache. The library
is built with the host's C++ compiler (`CXX`, else g++, c++ or clang++) for this CPU (-march=native) against the
XLA FFI headers that jaxlib ships, once per (sources, exact compile command, jax and jaxlib versions, compiler
version, CPU model and flags): a home directory shared across machines or environments never loads a build made
for another. Where the kernels cannot be built (not x86-64, no compiler, a failed build) `ensure_built()` returns
None, says why once in the log and keeps the reason (`unavailable_reason()`); callers then keep XLA's products.
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
import threading
from pathlib import Path

import jax
import jax.ffi
import jax.numpy as jnp
import jaxlib

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("gemv.cc", "mixers.cc"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("checks.h", "gemm.h"))
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
TARGETS = {"elastic_jax_products": "EjProducts", "elastic_jax_experts": "EjExperts",
           "elastic_jax_attention": "EjAttention", "elastic_jax_ssm_step": "EjSsmStep"}
DISABLE_ENV = "ELASTIC_JAX_CPU_KERNELS"  # 0: never build or use them
THREADS_ENV = "ELASTIC_JAX_DECODE_THREADS"  # threads per product (default: the CPUs this process may use)
CACHE_ENV = "ELASTIC_JAX_CACHE"  # default ~/.cache/elastic_jax


class Unavailable(Exception):
    """Why the kernels cannot be built or loaded here."""


def _cpu_identity() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [line for line in lines if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str:
    """The C++ compiler: `CXX` when set (and then only it), else the first of g++, c++, clang++ on PATH."""
    named = os.environ.get("CXX")
    if named:
        if shutil.which(named) is None:
            raise Unavailable(f"CXX={named} is not an executable C++ compiler")
        return shutil.which(named)
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    raise Unavailable("no C++ compiler (none of g++, c++, clang++ on PATH; set CXX)")


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


def command(compiler: str, include: str, out: str) -> list[str]:
    """The exact compile command line (part of the cache key)."""
    return [compiler, *FLAGS, f"-I{include}", *(str(source) for source in SOURCES), "-o", out, "-lpthread"]


def cache_key(compiler: str, include: str) -> str:
    """A digest of everything the library depends on: sources, command line, jax / jaxlib, compiler, CPU."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    parts = [*(path.read_text() for path in (*SOURCES, *HEADERS)), " ".join(command(compiler, include, "OUT")),
             f"jax {jax.__version__}", f"jaxlib {jaxlib.__version__}", version, _cpu_identity()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _compile(compiler: str, include: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = command(compiler, include, str(out))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders (test workers) never see a partial file


def _load() -> ctypes.CDLL:
    """Compile (or find in the cache), load and register the library; Unavailable says why it cannot be."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"built for x86-64 only (this is {platform.machine()})")
    compiler, include = _compiler(), jax.ffi.include_dir()
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "elastic_jax")
    target = cache / "kernels" / f"cpu_gemv-{cache_key(compiler, include)}.so"
    try:
        if not target.exists():
            log.info("CPU decode kernels: compiling %s", target)
            _compile(compiler, include, target)
        lib = ctypes.cdll.LoadLibrary(str(target))
    except OSError as err:
        raise Unavailable(str(err)) from err
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    lib.ej_set_threads(ctypes.c_int(default_threads()))
    return lib


def _tracing() -> bool:
    """Whether JAX is tracing (jit, vmap, grad, eval_shape) in this thread."""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # moved in a later jax: a new array is a tracer at least under jit
        return isinstance(jnp.zeros(()), jax.core.Tracer)
    return not trace_state_clean()


_LOCK = threading.Lock()


@functools.cache
def _outcome() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) or (None, why not), once per process; the reason is logged once."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None, f"{DISABLE_ENV}=0"
    try:
        return _load(), None
    except Unavailable as err:
        log.warning("CPU decode kernels unavailable, XLA's products are used: %s", err)
        return None, str(err)


def ensure_built() -> ctypes.CDLL | None:
    """The compiled kernels with their FFI targets registered for the CPU, or None where they cannot be built.
    Builds them on the first call, which must come before tracing (a program's build step, or install)."""
    with _LOCK:
        if _outcome.cache_info().currsize == 0 and _tracing():
            raise RuntimeError("the CPU decode kernels are built outside a trace: call "
                               "elastic_jax.kernels.cpu_gemv.build.ensure_built() (or cpu_gemv.available()) "
                               "before jax.jit traces a program that uses them")
        return _outcome()[0]


def library() -> ctypes.CDLL | None:
    """The kernels (`ensure_built()`)."""
    return ensure_built()


def unavailable_reason() -> str | None:
    """Why the kernels cannot be used here (None where they can); builds them first if need be."""
    ensure_built()
    return _outcome()[1]


def set_threads(threads: int) -> None:
    """Threads per product from the next call on (the library must be available); the old team's threads end."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    lib = library()
    if lib is None:
        raise RuntimeError(f"the CPU decode kernels are not available: {unavailable_reason()}")
    lib.ej_set_threads(ctypes.c_int(threads))


__all__ = ["DISABLE_ENV", "THREADS_ENV", "Unavailable", "cache_key", "command", "default_threads", "ensure_built",
           "library", "set_threads", "unavailable_reason"]

"""XLA flags for the test processes: the tests run tiny shapes, where compiling costs far more than running, so
LLVM's backend optimisations are off. The programs are the same; only their machine code is less optimised (about
half the compile time). A program that runs long (hundreds of training steps) is compiled with them back on."""

from collections.abc import Callable
from typing import Any

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Per-program overrides of FAST_COMPILE (jax's compiler_options): the tiny elastic parent's training step compiles
# in about 9 s instead of 5 s of CPU time but runs 2.3x faster, which pays after about 40 steps.
OPTIMISED = {"xla_backend_optimization_level": 2, "xla_llvm_disable_expensive_passes": False}


def compile_optimised(jitted: Callable, *args: Any) -> Callable:
    """`jitted` compiled for `args` with the backend optimisations on (for programs that run many times)."""
    return jitted.lower(*args).compile(compiler_options=OPTIMISED)

"""XLA flags for the test processes: the tests run tiny shapes, where compiling costs far more than running, so
LLVM's backend optimisations are off. The programs are the same; only their machine code is less optimised (about
half the compile time)."""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

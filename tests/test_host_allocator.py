"""The glibc settings applied on import keep XLA:CPU's per-call buffers in the process (no page faults per call)."""

import os
import platform
import subprocess
import sys

import pytest

# A jitted call whose output (and temporary) is 64 MiB, above glibc's largest mmap threshold; prints whether the
# settings are in effect and the minor page faults of each call after a warm-up (in which the heap settles).
_PROBE = """
import resource
from elastic_jax import host_allocator
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(x * 2.0, axis=0)[::2] + 1.0)
x = jnp.ones((4096, 4096))
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 2**20
del x
held = rss_mb()
host_allocator.release_host_memory()
print(held - rss_mb(), host_allocator.tune_host_allocator(), *faults[16:])
"""


def _probe(**env_overrides: str) -> tuple[bool, list[int], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ELASTIC_JAX_HOST_ALLOCATOR"}
    env.update(env_overrides, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    return out[-9] == "True", [int(n) for n in out[-8:]], int(out[-10])


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc malloc's")


@glibc_only
def test_import_keeps_large_buffers_between_calls():
    applied, faults, released_mb = _probe()
    assert applied
    assert sum(n < 1_000 for n in faults) >= 6, faults  # without the settings each call faults 16,384 pages back in
    assert released_mb >= 64  # the freed input and the held buffers go back to the system on request


@glibc_only
def test_opt_out_and_user_settings_leave_glibc_defaults():
    applied, faults, _ = _probe(ELASTIC_JAX_HOST_ALLOCATOR="default")
    assert not applied
    assert min(faults) > 10_000, faults  # the probe itself sees the difference the settings make
    applied, _, _ = _probe(MALLOC_ARENA_MAX="2")
    assert not applied

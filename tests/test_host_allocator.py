"""The glibc settings that tune_process() applies (the command line does, first thing) keep XLA:CPU's per-call
buffers in the process (no page faults per call); importing elastic_jax alone leaves glibc's defaults."""

import json
import os
import platform
import subprocess
import sys

import pytest

# A jitted call whose output (and temporary) is 64 MiB, above glibc's largest mmap threshold; prints whether the
# settings are in effect and the minor page faults of each call after a warm-up (in which the heap settles).
_PROBE = """
import json, resource, sys
import elastic_jax, elastic_jax.cli, elastic_jax.experiment, elastic_jax.inference.engine
from elastic_jax import host_allocator
if sys.argv[1] == "tune":  # as the command line and the benchmarks do
    elastic_jax.tune_process()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(x * 2.0, axis=0)[::2] + 1.0)
x = jnp.ones((4096, 4096))
faults = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 2**20
del x
held = rss_mb()
host_allocator.release_host_memory()
print(json.dumps({"applied": host_allocator.in_effect(), "faults": faults[16:], "released_mb": held - rss_mb()}))
"""


def _probe(tune: bool = True, calls: int = 24, **env_overrides: str) -> tuple[bool, list[int], int]:
    """(settings in effect, minor faults of each call after the 16 warm-up calls, MiB released on request)."""
    # the suite's compile flags are left out: this probe measures running, not compiling (64 MiB per call)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("ELASTIC_JAX_HOST_ALLOCATOR", "XLA_FLAGS")}
    env.update(env_overrides, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE, "tune" if tune else "import-only", str(calls)], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    result = json.loads(out)
    return result["applied"], result["faults"], result["released_mb"]


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc malloc's")


@glibc_only
def test_tuned_process_keeps_large_buffers_between_calls():
    applied, faults, released_mb = _probe()
    assert applied
    assert sum(n < 1_000 for n in faults) >= 6, faults  # without the settings each call faults 16,384 pages back in
    assert released_mb >= 64  # the freed input and the held buffers go back to the system on request


@glibc_only
def test_import_alone_leaves_glibc_defaults():
    applied, faults, _ = _probe(tune=False)
    assert not applied
    assert min(faults) > 10_000, faults  # every call faults its 64 MiB back in: what the settings spare


@glibc_only
def test_opt_out_and_user_settings_leave_glibc_defaults():
    assert not _probe(calls=1, ELASTIC_JAX_HOST_ALLOCATOR="default")[0]
    assert not _probe(calls=1, MALLOC_ARENA_MAX="2")[0]

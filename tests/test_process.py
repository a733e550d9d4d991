"""Importing elastic_jax changes nothing in the process: no environment variable, no malloc setting, no jax. Only
an explicit tune_process() (the command line's first call) does, and jax's own import-time settings are jax's."""

import glob
import importlib.util
import json
import os
import platform
import subprocess
import sys

_PROBE = """
import json, os, sys
start = dict(os.environ)
def changed(before):
    return sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
import elastic_jax
package = {"changed": changed(start), "jax_imported": "jax" in sys.modules}
import jax  # with libtpu installed, jax's own import sets TPU_LIBRARY_PATH and friends: a baseline, not ours
after_jax = dict(os.environ)
import elastic_jax.cli, elastic_jax.experiment, elastic_jax.inference.engine, elastic_jax.plan, elastic_jax.train.loop
from elastic_jax import host_allocator
cfg = elastic_jax.load_config("tiny")
elastic_jax.count_params(cfg)
modules = {"changed": changed(after_jax), "allocator": host_allocator.in_effect(),
           "jax_platforms": jax.config.jax_platforms}
elastic_jax.tune_process()
tuned = {"changed": changed(after_jax), "allocator": host_allocator.in_effect()}
print(json.dumps({"package": package, "modules": modules, "tuned": tuned}))
"""


def test_importing_changes_no_environment_variable_and_no_malloc_setting():
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "ELASTIC_JAX_HOST_ALLOCATOR")
           and not k.startswith(("TPU_", "MALLOC_"))}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["package"] == {"changed": [], "jax_imported": False}  # `import elastic_jax` alone loads no jax
    assert result["modules"] == {"changed": [], "allocator": False, "jax_platforms": None}
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    libtpu_without_tpu = importlib.util.find_spec("libtpu") is not None and not glob.glob("/dev/accel*")
    assert result["tuned"] == {"changed": ["JAX_PLATFORMS"] if libtpu_without_tpu else [], "allocator": glibc}

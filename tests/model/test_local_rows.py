"""Under a mesh, MoE routing runs on each device's own rows (a shard_map over the batch axes) and gives the
single-device values and gradients: the weights enter whole over FSDP, split over `tensor` by expert width, and
their gradients are summed over the devices."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.train.helpers import REPO, subprocess_env

SCRIPT = r"""
import dataclasses, json
import jax, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from jax.sharding import NamedSharding, PartitionSpec as P
from elastic_jax import distributed
from elastic_jax.model.functional import build
from tests.model.helpers import PARITY_CONFIGS, random_params, random_tokens

cfg = dataclasses.replace(PARITY_CONFIGS["grouped_routing"], pattern="ME-")
params, tokens = random_params(cfg, 1), jnp.asarray(random_tokens(cfg, 4, 16, 2))
model = build(cfg)

def loss(p, t):
    return jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, t)[0])[..., 3])

want = jax.jit(jax.value_and_grad(loss))(params, tokens)
out = {}
for name, axes in (("fsdp", {"data": 1, "fsdp": 4}), ("fsdp_tensor", {"data": 1, "fsdp": 2, "tensor": 2})):
    mesh = distributed.make_mesh(axes, jax.devices())

    def on_mesh(p, t, mesh=mesh):
        with distributed.tracing_on(mesh):
            return loss(p, t)

    step = jax.jit(jax.value_and_grad(on_mesh), in_shardings=(distributed.param_shardings(params, mesh),
                                                               NamedSharding(mesh, P(("data", "fsdp")))))
    got = step(params, tokens)
    hlo = step.lower(params, tokens).as_text()
    out[name] = {"loss": abs(float(got[0]) - float(want[0])),
                 "grads": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got[1]),
                                                                              jax.tree.leaves(want[1]))),
                 "manual": hlo.count("sdy.manual_computation") + hlo.count("shard_map")}
print(json.dumps(out))
"""


def test_moe_on_each_devices_rows_equals_one_device():
    """FSDP over 4 devices, and FSDP x tensor 2 x 2 (each device holds half of every expert's width and the
    outputs are summed over `tensor`)."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=subprocess_env(4), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, result in out.items():
        assert result["manual"] >= 1, name  # the routed experts run in a shard_map
        assert result["loss"] < 1e-5 and result["grads"] < 1e-5, (name, result)

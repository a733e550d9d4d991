"""Expert parallelism (model/expert_parallel.py): on 8 fake CPU devices, meshes with an `expert` axis give one
device's joint elastic loss and gradients, with router-masked students and statically sliced experts, while
each device holds only its slice of the experts and the routed rows travel in all-to-alls."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec as P

from elastic_jax import distributed
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.expert_parallel import expert_axis
from elastic_jax.plan import candidate_meshes
from tests.train.helpers import REPO, subprocess_env

SCRIPT = r"""
import dataclasses, json
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from jax.sharding import NamedSharding, PartitionSpec as P
import elastic_jax as ej
from elastic_jax import distributed
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.train.elastic_step import JointLossConfig, joint_loss

cfg = ej.load_config("tiny", ["model.pattern='E'", "model.hidden_size=32", "model.vocab_size=64",
                              "model.moe_intermediate_size=16", "model.moe_shared_expert_intermediate_size=16"])
router = Router(cfg, RouterConfig(budgets=(1.0, 0.7, 0.5, 0.4), axes=("experts", "expert_ffn")))
model = ej.init_params(cfg, 1)
params = {"model": model, "router": jax.tree.map(lambda x: 30 * x, router.init(jax.random.PRNGKey(2)))}
teacher = jax.tree.map(lambda x: x * 1.01, model)
rng = np.random.default_rng(0)
batch = {"inputs": jnp.asarray(rng.integers(3, 64, (8, 16)), jnp.int32),
         "targets": jnp.asarray(rng.integers(3, 64, (8, 16)), jnp.int32),
         "loss_mask": jnp.asarray(rng.random((8, 16)) > 0.2, jnp.float32)}
# two router-masked students; sliced students of 6 and 4 experts (of 8) with half the expert width
fixed = (None, None, ElasticSpec(n_routed_experts=6, moe_intermediate_size=8),
         ElasticSpec(n_routed_experts=4, moe_intermediate_size=8))
lc = JointLossConfig(weights=(1.0, 0.6, 0.3, 0.3), fixed_specs=fixed, ce_weight=0.1)
key, progress = jax.random.PRNGKey(7), jnp.asarray(0.3)
masks = [router.sample(params["router"], i, jax.random.split(key, 4)[i], progress)[0] for i in (0, 1)]
kept = [int((np.asarray(m.layer(0).experts) > 0).sum()) for m in masks]

def loss(p, mesh=None, lc=lc):
    with distributed.tracing_on(mesh):
        return joint_loss(cfg, router, lc, p, teacher, batch, key, progress, mesh)[0]

want = jax.jit(jax.value_and_grad(loss))(params)
out = {"kept_experts": kept}
for name, axes in (("expert_fsdp", {"data": 1, "fsdp": 2, "expert": 4}),
                   ("expert_fsdp_tensor", {"data": 1, "fsdp": 2, "tensor": 2, "expert": 2})):
    mesh = distributed.make_mesh(axes, jax.devices())
    shardings = {"model": distributed.param_shardings(model, mesh),
                 "router": jax.tree.map(lambda _: NamedSharding(mesh, P()), params["router"])}
    step = jax.jit(jax.value_and_grad(lambda p, mesh=mesh: loss(p, mesh)), in_shardings=(shardings,))
    compiled = step.lower(params).compile()
    got = compiled(params)
    hlo = compiled.as_text()
    gathers = [line.split("=", 1)[1].split("all-gather(")[0] for line in hlo.splitlines() if "all-gather(" in line]
    tpu = dataclasses.replace(lc, target=CompileTarget("tpu"))  # lowered only: XLA:CPU cannot compile it
    text = jax.jit(jax.value_and_grad(lambda p, mesh=mesh: loss(p, mesh, tpu)), in_shardings=(shardings,)).lower(
        params).as_text()
    out[name] = {"loss": abs(float(got[0]) - float(want[0])),
                 "tpu_ragged": text.count("@ragged_all_to_all("),
                 "grads": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got[1]),
                                                                              jax.tree.leaves(want[1]))),
                 "all_to_all": hlo.count("all-to-all("),
                 "gathered_up_proj": sorted({s for s in ("f32[8,32,16]", "f32[4,32,8]", "f32[2,32,16]")
                                             if any(s in g for g in gathers)})}

# The ragged exchange (GPU / TPU) on CPU devices: XLA:CPU has no ragged all-to-all, so its documented semantics
# stand in for it (an all-gather, then each sender's chunk copied to its output offset); rows of 4 devices with
# experts of every load, 2 per device, against each row times its own expert's matrix.
from elastic_jax.model import expert_parallel

def ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name):
    me = jax.lax.axis_index(axis_name)
    ops, starts, sizes, at = (jax.lax.all_gather(a, axis_name) for a in (operand, input_offsets, send_sizes,
                                                                        output_offsets))
    pos = jnp.arange(output.shape[0])
    for s in range(ops.shape[0]):
        begin, size, src = at[s, me], recv_sizes[s], starts[s, me]
        take = ops[s][jnp.clip(src + pos - begin, 0, operand.shape[0] - 1)]
        output = jnp.where(((pos >= begin) & (pos < begin + size))[:, None], take, output)
        output = jnp.where(size == sizes[s, me], output, jnp.nan)  # the receiver expects what the sender sends
    return output

n, tokens, k, experts, dim = 4, 5, 2, 8, 3
idx = np.stack([np.stack([rng.choice(experts, k, replace=False) for _ in range(tokens)]) for _ in range(n)])
idx[0] = [[2, 3]] * tokens  # device 0 sends every row to device 1
rows = np.stack([np.sort(i.reshape(-1)) for i in idx])  # each device's rows sorted by expert
x = rng.normal(size=(n, tokens * k, dim)).astype(np.float32)
w = rng.normal(size=(experts, dim, dim)).astype(np.float32)
sizes = np.stack([np.bincount(r, minlength=experts) for r in rows]).astype(np.int32)
mesh = jax.make_mesh((n,), ("expert",), devices=jax.devices()[:n])

def exchanged(ragged):
    def local(x, sizes, w):
        compute = lambda r, s: jax.lax.ragged_dot(r, w, s)
        return expert_parallel.across_experts(x[0], sizes[0], compute, top_k=k, ragged=ragged)[None]
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P("expert"), P("expert"), P("expert")), out_specs=P("expert"))
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("expert")))
    return np.asarray(jax.jit(fn)(put(x), put(sizes), put(w)))

jax.lax.ragged_all_to_all = ragged_all_to_all
want_rows = np.einsum("nrd,nrde->nre", x, w[rows])
out["exchange"] = {name: float(np.max(np.abs(exchanged(ragged) - want_rows)))
                   for name, ragged in (("ragged", True), ("padded", False))}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parity():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=subprocess_env(8), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_expert_parallel_joint_step_equals_one_device(parity):
    """expert 4 x fsdp 2 and expert 2 x fsdp 2 x tensor 2: the joint loss (teacher, two router-masked students,
    sliced students of 6 and 4 experts) and every gradient equal one device's to 1e-5."""
    assert min(parity["kept_experts"]) < 8, parity  # a router-masked student drops experts
    for name in ("expert_fsdp", "expert_fsdp_tensor"):
        result = parity[name]
        assert result["loss"] < 1e-5 and result["grads"] < 1e-5, (name, result)
        assert result["all_to_all"] >= 4, (name, result)  # rows out and back, forward and backward
        assert result["tpu_ragged"] >= 4, (name, result)  # the same step for a TPU: lax.ragged_all_to_all


def test_ragged_and_padded_exchanges_bring_every_row_its_own_experts_output(parity):
    """Both forms of the exchange, on rows of uneven loads (one device sending all its rows to one device)."""
    assert parity["exchange"]["ragged"] < 1e-5 and parity["exchange"]["padded"] < 1e-5, parity["exchange"]


def test_each_device_gathers_only_its_slice_of_the_experts(parity):
    """FSDP gathers the parent's up_proj [8 experts, 32, 16] over the embedding only for the device's own experts:
    [2, 32, 16] with expert 4, [4, 32, 8] with expert 2 x tensor 2; never all 8 experts."""
    assert parity["expert_fsdp"]["gathered_up_proj"] == ["f32[2,32,16]"]
    assert parity["expert_fsdp_tensor"]["gathered_up_proj"] == ["f32[4,32,8]"]


def test_expert_axis_needs_a_mesh_that_splits_experts_and_rows():
    """No mesh: no expert parallelism; the exchange is ragged only where XLA has it (not on CPU stand-ins)."""
    assert expert_axis(8, 8) is None
    mesh = jax.sharding.AbstractMesh((1, 1, 1, 1), ("data", "fsdp", "tensor", "expert"))
    with jax.sharding.use_abstract_mesh(mesh):
        assert expert_axis(8, 8) is None
    assert CompileTarget("tpu").ragged_exchange and CompileTarget("gpu").ragged_exchange
    assert not CompileTarget("cpu").ragged_exchange and not CompileTarget("gpu", host_devices=True).ragged_exchange


def test_plans_try_expert_parallel_meshes_and_shard_the_other_weights_over_the_expert_axis_too():
    meshes = candidate_meshes({"data": -1}, 16)
    for e in (4, 8, 16):
        assert {"data": 1, "fsdp": 16 // e, "tensor": 1, "expert": e} in meshes
    mesh = jax.sharding.AbstractMesh((1, 2, 1, 8), distributed.MESH_AXES)
    spec = distributed.logical_to_spec
    assert spec(("experts", "embed", "expert_mlp"), (128, 64, 32), mesh) == P("expert", "fsdp", None)
    assert spec(("vocab", "embed"), (100, 64), mesh) == P(None, ("fsdp", "expert"))

"""Compile-only plans: a TPU topology of several chips through libtpu (Pallas TPU SSD kernel in the sharded
program), GPUs on fake CPU devices through the CLI's JSON, target parsing, and the refusal before pretraining a
model whose training state cannot fit this machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from elastic_jax import plan, plan_targets
from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_config

# A tiny elastic experiment shrunk to one Mamba layer and short rows (chunk 128: the Pallas TPU kernel takes it).
SMALL = ["--config.model.pattern=M", "--config.model.chunk_size=128", "--config.train.global_batch=8",
         "--config.train.seq_len=64", "--config.elastic.stage2_seq_len=64"]
BYTE_KINDS = {"parameters", "optimizer_state", "teacher", "batch_and_other_inputs", "activations_and_temporaries",
              "outputs_not_aliased"}


def test_targets_parse_to_devices_topologies_and_memory():
    v5p = plan.parse_target("v5p-128")  # v5p slices are named by TensorCores: 64 chips
    assert (v5p.platform, v5p.num_devices, v5p.topology, v5p.chips_per_host) == ("tpu", 64, "v5p:4x4x4", (2, 2, 1))
    assert plan.parse_target("v5p:2x2x1").num_devices == 4
    # single-host slices: the whole grid is one host (libtpu's chips_per_host_bounds), 2x2x1 for v4 / v5p
    one_host = {"v4-8": ("v4:2x2x1", (2, 2, 1)), "v5p-8": ("v5p:2x2x1", (2, 2, 1)), "v5e-1": ("v5e:1x1", (1, 1, 1)),
                "v5e-4": ("v5e:2x2", (2, 2, 1)), "v6e-8": ("v6e:2x4", (2, 4, 1))}
    for name, (topology, bounds) in one_host.items():
        t = plan.parse_target(name)
        assert (t.topology, t.chips_per_host, t.devices_per_process) == (topology, bounds, t.num_devices), name
    v5e = plan.parse_target("v5e-16")  # larger v5e / v6e slices are built of 4-chip hosts
    assert (v5e.topology, v5e.chips_per_host, v5e.devices_per_process) == ("v5e:4x4", (2, 2, 1), 4)
    gpus = plan.parse_target("16xH100")
    assert (gpus.platform, gpus.num_devices, gpus.hbm_bytes) == ("gpu", 16, 80 * 10**9)
    with pytest.raises(ConfigError, match="target"):
        plan.parse_target("8xZ80")


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="needs libtpu (pip install 'elastic_jax[tpu-plan]'; part of the peers extra)")


@needs_libtpu
def test_tpu_plan_on_four_v5p_chips_has_the_pallas_kernel_in_the_sharded_program():
    # batch over fsdp and heads over tensor: the kernel's shard_map splits both
    p = plan.plan("tiny_elastic", "v5p:2x2x1", mode="mask", overrides=SMALL,
                  meshes=[{"data": 1, "fsdp": 2, "tensor": 2}], programs=("elastic",))
    assert (p["platform"], p["device_count"], p["topology"]) == ("tpu", 4, "v5p:2x2x1")
    best = p["programs"]["elastic"]["best"]
    assert best["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2, "expert": 1}
    assert best["pallas_tpu_ssd_calls"] >= 1
    assert set(best["bytes"]) == BYTE_KINDS
    assert best["bytes"]["parameters"] > 0 and best["bytes"]["teacher"] > 0 and best["bytes"]["optimizer_state"] > 0
    assert best["total_bytes"] >= best["bytes"]["activations_and_temporaries"] > 0
    assert best["flops_per_step"] > 0 and best["fits"] and p["fits"]
    # libtpu's guesses ("WARNING: could not determine TPU worker number") must not reach the processes started
    # afterwards, or a training run started from here would take itself for a TPU pod worker
    child = subprocess.run([sys.executable, "-c", "from elastic_jax.distributed import detect_cluster; "
                            "print(detect_cluster())"], capture_output=True, text=True)
    assert child.stdout.strip() == "single", child.stderr[-2000:]


def test_gpu_plan_on_fake_devices_prints_json_from_the_cli():
    cmd = [sys.executable, "-m", "elastic_jax.cli", "plan", "--config", "tiny_elastic", "--target", "8xH100",
           "--mode", "static", "--mesh", "data=1,fsdp=-1", "--json", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = json.loads(proc.stdout)
    assert (p["platform"], p["device_count"], p["mode"], p["budgets"]) == ("gpu", 8, "static", [1.0, 0.7, 0.4])
    assert set(p["programs"]) == {"elastic", "pretrain"}
    for entry in p["programs"].values():
        best = entry["best"]
        assert best["mesh"]["fsdp"] == 8 and set(best["bytes"]) == BYTE_KINDS
        assert best["total_bytes"] > 0 and isinstance(best["fits"], bool) and best["pallas_tpu_ssd_calls"] == 0
    # the pretraining step holds no teacher; the elastic step's teacher is sharded like the parameters
    assert p["programs"]["pretrain"]["best"]["bytes"]["teacher"] == 0
    elastic = p["programs"]["elastic"]["best"]["bytes"]
    assert 0 < elastic["teacher"] <= elastic["parameters"]
    assert p["fits"] is True
    # host RAM per process: one process for the 8 GPUs; import-hf holds one tensor, the sharded restore the
    # teacher's and the student's shards of its devices, both less than the whole parent
    host = p["host_memory_per_process"]
    assert (host["processes"], host["devices_per_process"]) == (1, 8)
    assert host["restore_sharded"] == 8 * (elastic["parameters"] + elastic["teacher"])
    assert 0 < host["import_hf"] < host["whole_parent"] == 4 * p["model"]["total_params"]


def test_refuses_a_model_whose_training_state_cannot_fit_before_compiling():
    nano = load_config("nemotron3_nano_30b_a3b")
    with pytest.raises(ConfigError, match=r"31\.58B parameters need at least 471 GiB"):
        plan.check_fits_locally(nano, "pretrain")
    plan.check_fits_locally(load_config("tiny"), "elastify")  # fits: no error


def test_a_plan_that_does_not_fit_is_compiled_again_with_rematerialisation():
    import jax

    # one CPU device standing in for a GPU far too small for the activations of four Mamba layers: the plan
    # compiles the best mesh again with the blocks rematerialised and the repeated layers scanned
    tight = plan.Target(name="1xTiny", platform="gpu", num_devices=1, hbm_bytes=1)
    overrides = [*SMALL, "--config.model.pattern=MMMM", "--config.train.seq_len=256", "--config.train.global_batch=16"]
    out = plan._compile_candidates("tiny_elastic", overrides, tight, "mask", None, [{"data": 1}], ("pretrain",),
                                   jax.devices()[:1])
    plain, remat = out["pretrain"]
    assert (plain["remat"], remat["remat"], remat["scan_layers"]) == ("none", "block", True)
    assert plain["mesh"] == remat["mesh"]
    assert remat["bytes"]["parameters"] == plain["bytes"]["parameters"]
    assert remat["bytes"]["activations_and_temporaries"] < 0.5 * plain["bytes"]["activations_and_temporaries"]
    assert "(remat block, layer scan)" in plan.format_plan(
        plan._assemble(*plan._experiment("tiny_elastic", overrides, None), tight, "mask", out))
    # a device that holds the state and half the rematerialised temporaries: the plan estimates two micro-batches
    # and compiles them to check
    fixed = remat["total_bytes"] - remat["bytes"]["activations_and_temporaries"]
    half = plan.Target(name="1xHalf", platform="gpu", num_devices=1,
                       hbm_bytes=fixed + int(0.6 * remat["bytes"]["activations_and_temporaries"]))
    tried = plan._compile_candidates("tiny_elastic", overrides, half, "mask", None, [{"data": 1}], ("pretrain",),
                                     jax.devices()[:1])["pretrain"]
    assert [(r["remat"], r["micro_batches"]) for r in tried] == [("none", 1), ("block", 1), ("block", 2)]
    assert tried[2]["bytes"]["activations_and_temporaries"] < remat["bytes"]["activations_and_temporaries"]


# One MLP layer and a global batch of 1, which each mesh compiles at its nearest size: one row per device. (A Mamba
# layer's Pallas kernel would cost about 5 s of CPU per slice to compile; the sharded kernel is the 4-chip test's.)
ONE_ROW = ["--config.model.pattern=-", "--config.train.seq_len=64", "--config.train.global_batch=1"]
TPU_LISTED = [t for t in plan_targets.LISTED_TARGETS if plan.parse_target(t).platform == "tpu"]


@needs_libtpu
@pytest.mark.parametrize("name", TPU_LISTED)
def test_every_listed_tpu_slice_plans(name):
    p = plan.plan("tiny", name, mode="mask", overrides=ONE_ROW, meshes=[{"data": 1, "fsdp": -1}],
                  programs=("pretrain",))
    target = plan.parse_target(name)
    assert (p["platform"], p["device_count"], p["topology"]) == ("tpu", target.num_devices, target.topology)
    best = p["programs"]["pretrain"]["best"]
    assert best["fits"] and best["total_bytes"] >= best["bytes"]["parameters"] > 0
    # the configured batch of 1 does not split over the devices: the plan says which sizes the mesh takes and
    # compiles the nearest
    n = target.num_devices
    assert (best["global_batch"], best["global_batch_multiple"]) == (n, n)
    assert best.get("configured_global_batch") == (1 if n > 1 else None)
    if n > 1:
        assert f"global batch {n} compiled instead of the configured 1" in plan.format_plan(p)


def test_every_listed_gpu_node_plans_on_stand_in_devices_in_one_process():
    # one process with as many fake CPU devices as the largest node: each plan compiles there, no subprocess
    gpus = [t for t in plan_targets.LISTED_TARGETS if plan.parse_target(t).platform == "gpu"]
    most = max(plan.parse_target(t).num_devices for t in gpus)
    script = ("import json, sys\nfrom elastic_jax import plan\n"
              "for name in sys.argv[1:]:\n"
              f"    p = plan.plan('tiny', name, mode='mask', overrides={ONE_ROW!r}, programs=('pretrain',),\n"
              "                  meshes=[{'data': 1, 'fsdp': -1}])\n"
              "    best = p['programs']['pretrain']['best']\n"
              "    print(json.dumps([name, p['device_count'], best['global_batch'], best['fits'], p['figures']]))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={most}"}
    proc = subprocess.run([sys.executable, "-c", script, *gpus], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == gpus
    for name, devices, batch, fits, figures in rows:
        n = plan.parse_target(name).num_devices
        assert (devices, batch, fits) == (n, n, True), name
        assert figures.startswith("estimate (CPU stand-in devices)")


@needs_libtpu
def test_a_topology_libtpu_refuses_is_one_error_line(capsys):
    with pytest.raises(plan.PlanError, match=r"--target v7x:2x2x1: libtpu refuses topology v7x:2x2x1"):
        plan.tpu_devices(plan.Target("v7x:2x2x1", "tpu", 4, 1, "v7x:2x2x1", (2, 2, 1)))
    from elastic_jax.cli import main

    assert main(["plan", "--config", "tiny", "--target", "v5e:3x3"]) == 2  # 9 chips: no 2x2x1 hosts make it
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --target v5e:3x3: libtpu refuses topology v5e:3x3 with chips_per_host_bounds "
                              "2x2x1: INVALID_ARGUMENT")
    assert "Traceback" not in "\n".join(err)


def test_gpu_plans_compile_for_a_mocked_gpu_topology_on_a_gpu_host():
    h100s = plan.parse_target("16xH100")
    env = plan_targets.gpu_compile_env(h100s, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --other"}, 1)
    assert (env["JAX_MOCK_GPU_TOPOLOGY"], env["XLA_FLAGS"]) == ("1x16x1", "--other")  # one H100: 16 mocked hosts
    assert plan_targets.gpu_compile_env(h100s, {}, 8)["JAX_MOCK_GPU_TOPOLOGY"] == "1x2x8"  # an 8-GPU node: two of it
    odd = plan_targets.gpu_compile_env(plan.parse_target("12xH100"), {}, 8)  # 4 of this node's GPUs per mocked host
    assert (odd["JAX_MOCK_GPU_TOPOLOGY"], odd["JAX_CUDA_VISIBLE_DEVICES"]) == ("1x3x4", "0,1,2,3")
    cpu = plan_targets.gpu_compile_env(h100s, {"JAX_MOCK_GPU_TOPOLOGY": "1x2x8"}, 0)  # no GPU here: fake CPU devices
    assert "JAX_MOCK_GPU_TOPOLOGY" not in cpu and cpu["JAX_PLATFORMS"] == "cpu"
    assert cpu["XLA_FLAGS"] == "--xla_force_host_platform_device_count=16"


def test_a_plan_that_does_not_fit_names_the_smallest_change_from_its_own_figures():
    gib = plan.GiB
    best = {"total_bytes": 100 * gib, "bytes": {"parameters": 10 * gib, "optimizer_state": 20 * gib,
                                                 "teacher": 10 * gib, "batch_and_other_inputs": 0,
                                                 "activations_and_temporaries": 60 * gib, "outputs_not_aliased": 0}}
    h100s = plan.Target("16xH100", "gpu", 16, 85 * gib)
    change = plan_targets.smallest_change(best, h100s)
    totals = {o["change"]: o["total_bytes"] / gib for o in change["options"]}
    # the state is 40 GiB, the rest 60: 26 GPUs would hold it (60 + 40 * 16 / 26 <= 85), whole hosts make it 32
    assert totals == {"optimizer state offloaded to host memory": 80, "bf16 master weights and teacher": 90,
                      "bf16 master weights and teacher, optimizer state offloaded": 70, "32 devices instead of 16": 80}
    assert change["smallest"] == "optimizer state offloaded to host memory"
    tight = plan_targets.smallest_change(best, plan.Target("16xSmall", "gpu", 16, 75 * gib))
    assert tight["smallest"] == "bf16 master weights and teacher, optimizer state offloaded"
    none = plan_targets.smallest_change(best, plan.Target("16xTiny", "gpu", 16, 50 * gib))
    assert none["smallest"] is None and "60.0 GiB per device of the 50.0" in none["note"]
    assert not any(o["change"].endswith("instead of 16") for o in none["options"])  # no device count would do

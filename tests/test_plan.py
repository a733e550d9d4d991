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

from elastic_jax import plan
from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_config

# A tiny elastic experiment shrunk to one Mamba layer and short rows (chunk 128: the Pallas TPU kernel takes it).
SMALL = ["--config.model.pattern=M", "--config.model.chunk_size=128", "--config.train.global_batch=8",
         "--config.train.seq_len=64", "--config.elastic.stage2_seq_len=64"]
BYTE_KINDS = {"parameters", "optimizer_state", "teacher", "batch_and_other_inputs", "activations_and_temporaries",
              "outputs_not_aliased"}


def test_targets_parse_to_devices_topologies_and_memory():
    v5p = plan.parse_target("v5p-128")  # v5p slices are named by TensorCores: 64 chips
    assert (v5p.platform, v5p.num_devices, v5p.topology) == ("tpu", 64, "v5p:4x4x4")
    assert plan.parse_target("v5e-8").topology == "v5e:2x4"
    assert plan.parse_target("v5p:2x2x1").num_devices == 4
    gpus = plan.parse_target("16xH100")
    assert (gpus.platform, gpus.num_devices, gpus.hbm_bytes) == ("gpu", 16, 80 * 10**9)
    with pytest.raises(ConfigError, match="target"):
        plan.parse_target("8xZ80")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu (pip install 'elastic_jax[tpu-plan]'; part of the peers extra)")
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

"""Mesh construction, sharding rules, start-up detection, and multi-device / multi-process parity of training."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import jax
import pytest

from elastic_jax import distributed
from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_config
from elastic_jax.model.declare import UndeclaredParamError
from elastic_jax.model.functional import param_shapes
from tests.train.helpers import REPO, losses, run_train, subprocess_env, train_cmd

PARITY = ("--config.train.total_steps=5", "--config.checkpoint.every_steps=0")


# ---- unit tests (one device) -------------------------------------------------------------------------------
def test_mesh_shape_fills_one_auto_axis():
    assert distributed.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2,
                                                                                 "expert": 1}
    assert distributed.mesh_shape(None, 4) == {"data": 4, "fsdp": 1, "tensor": 1, "expert": 1}


@pytest.mark.parametrize("mesh, match", [
    ({"data": -1, "fsdp": 3}, "does not divide"),
    ({"data": 2, "fsdp": 2}, "multiply to 4 but there are 8"),
    ({"data": -1, "tensor": -1}, "at most one -1"),
    ({"pipeline": 2}, "unknown axis name"),
    ({"data": 0}, "positive integers"),
])
def test_mesh_errors_are_clear(mesh, match):
    with pytest.raises(ConfigError, match=match):
        distributed.mesh_shape(mesh, 8)


def test_every_tiny_parameter_has_logical_axes():
    """Each parameter of the tiny model gets named axes of the right rank; matrices are never left unnamed."""
    shapes = param_shapes(load_config("tiny"))
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        name = distributed.path_str(path)
        axes = distributed.logical_axes(name, leaf.ndim)
        assert len(axes) == leaf.ndim, name
        if leaf.ndim >= 2 and "conv_kernel" not in name:
            assert any(a is not None for a in axes), name
    assert distributed.logical_axes("layers_2/mixer/up_proj", 3) == ("experts", "embed", "expert_mlp")
    assert distributed.logical_axes("embeddings/embedding", 2) == ("vocab", "embed")
    assert distributed.logical_axes("layers_0/mixer/norm/weight", 1) == ("mamba_inner",)
    assert distributed.logical_axes("layers_0/norm/weight", 1) == (None,)
    with pytest.raises(UndeclaredParamError, match="layers_0/mixer/extra"):  # nothing is replicated by default
        distributed.logical_axes("layers_0/mixer/extra", 1)


def test_detect_cluster_from_environment():
    assert distributed.detect_cluster({}) == "single"
    assert distributed.detect_cluster({"ELASTIC_JAX_COORDINATOR": "h:1234"}) == "explicit"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == "single"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"


def test_initialize_is_a_noop_for_one_process_and_rejects_partial_settings():
    assert distributed.initialize(env={}) == "single"
    with pytest.raises(ConfigError, match="ELASTIC_JAX_NUM_PROCESSES"):
        distributed.initialize(env={"ELASTIC_JAX_COORDINATOR": "localhost:1"})
    with pytest.raises(ConfigError, match="must be in"):
        distributed.initialize(env={"ELASTIC_JAX_COORDINATOR": "localhost:1", "ELASTIC_JAX_NUM_PROCESSES": "2",
                                    "ELASTIC_JAX_PROCESS_ID": "2"})


# ---- subprocess parity tests --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(build_once):
    """One process, one device: the losses every layout must reproduce (one run per test run, not per worker)."""
    return build_once("one_device", lambda workdir: run_train(workdir, *PARITY, "--config.checkpoint.every_steps=5"))


def _assert_close(ref: dict[int, float], got: dict[int, float]) -> None:
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), (step, ref, got)


def test_eight_devices_data_fsdp_tensor_match_one_device(reference, tmp_path):
    """2 (data) x 2 (fsdp) x 2 (tensor) fake CPU devices give the same losses as one device."""
    run_train(tmp_path, *PARITY, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
              devices=8)
    _assert_close(losses(reference), losses(tmp_path))


def test_restore_onto_another_mesh(reference):
    """A one-device checkpoint restores onto a 2x2x2 mesh with the requested shardings and the same values."""
    script = f"""
import jax, numpy as np
from elastic_jax.checkpoint import Checkpointer, load_params
from elastic_jax.experiment import load_experiment
from elastic_jax.train.loop import make_layout, parse_experiment
spec = parse_experiment(load_experiment("tiny", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]))
layout = make_layout(spec)
abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        layout.abstract.to_tree(), layout.state_sharding.to_tree())
step, tree, _, _ = Checkpointer({str(reference / "checkpoints")!r}).restore_latest(abstract)
kernel = tree["params"]["layers_2"]["mixer"]["up_proj"]
assert kernel.sharding == layout.state_sharding.params["layers_2"]["mixer"]["up_proj"], kernel.sharding
assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
ref = load_params({str(reference / "checkpoints")!r})
for (path, a) in jax.tree_util.tree_leaves_with_path(tree["params"]):
    b = ref
    for k in path:
        b = b[k.key]
    assert np.array_equal(np.asarray(a), b), path
print("ok", step)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(8), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok 5" in proc.stdout, proc.stderr[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tmp_path):
    """Two real processes (jax.distributed on localhost, gloo CPU collectives) give the same losses as one."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = subprocess_env(ELASTIC_JAX_COORDINATOR=f"localhost:{port}", ELASTIC_JAX_NUM_PROCESSES="2",
                             ELASTIC_JAX_PROCESS_ID=str(pid))
        cmd = train_cmd(tmp_path, *PARITY, "--config.checkpoint.every_steps=5", "--config.train.data_loading=global")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-5000:]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])["result"]
    assert result["step"] == 5
    _assert_close(losses(reference), losses(tmp_path))
    assert (tmp_path / "checkpoints" / "5" / "state").is_dir()

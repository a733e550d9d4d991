"""Elastification on a 2 (data) x 2 (fsdp) x 2 (tensor) mesh of fake CPU devices trains like one device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import elastic_jax as ej
from elastic_jax.model_io import save_model
from tests.train.helpers import REPO, subprocess_env

# Two budgets (the smallest elastic program with every block type) over 4 steps: 2 with router masks, then
# 2 with the architectures fixed, trained as static prefix slices. The CE term keeps the loss of order 1
# (distillation from a copy of itself is ~1e-3, where float32 summation order alone moves it by 1e-5).
OVERRIDES = ["model.pattern='M*E-'", "model.hidden_size=32", "elastic.budgets=(1.0, 0.5)", "elastic.ce_weight=1.0",
             "elastic.stage2_weights=None", "elastic.stage1_steps=4", "elastic.stage2_steps=0",
             "elastic.static_after=0.5", "elastic.stage1_seq_len=32", "elastic.permute=False",
             "train.global_batch=4", "train.warmup_steps=1", "train.log_every=1", "train.progress_bar=False",
             "checkpoint.every_steps=0"]
MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]

# Trains (no per-budget evaluation), then resumes from the final checkpoint; prints one JSON line.
SCRIPT = """
import json, sys
import jax
from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_experiment
from elastic_jax.train.elastify import prepare_elastify, train_elastic
from elastic_jax.train.metrics import read_metrics

workdir, parent, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
config = load_experiment("tiny_elastic", overrides)

def shards(x):
    return len({str(s.index) for s in x.addressable_shards})

def layout_of(run):
    model = run.state.params["model"]
    want = run.layout.state_sharding.params["model"]
    return {"matches": all(a.sharding == s for a, s in zip(jax.tree.leaves(model), jax.tree.leaves(want), strict=True)),
            "teacher_matches": all(a.sharding == s for a, s in zip(jax.tree.leaves(run.teacher),
                                                                    jax.tree.leaves(want), strict=True)),
            "embedding_shards": shards(model["embeddings"]["embedding"]),
            "expert_shards": shards(model["layers_2"]["mixer"]["up_proj"]),
            "teacher_shards": shards(run.teacher["embeddings"]["embedding"]),
            "router_shards": max(shards(x) for x in jax.tree.leaves(run.state.params["router"]))}

try:  # 2 rows do not split over data x fsdp = 4
    prepare_elastify(load_experiment("tiny_elastic", overrides + ["train.global_batch=2"]), workdir + "_2",
                     parent).ckpt.close()
    batch_error = None
except ConfigError as err:
    batch_error = str(err)
run = prepare_elastify(config, workdir, parent)
steps = train_elastic(run)
trained = layout_of(run)
resumed = prepare_elastify(config, workdir, parent)  # the final checkpoint, restored into the mesh's shardings
resumed.ckpt.close()
records = [r for r in read_metrics(workdir) if "train/loss" in r]
print(json.dumps({"devices": jax.device_count(), "batch_error": batch_error, "compilations": steps.compilations,
                  "trained": trained, "resumed": {"start": resumed.start, **layout_of(resumed)},
                  "loss": {r["step"]: r["train/loss"] for r in records},
                  "ratio": {r["step"]: r["train/ratio/0.5"] for r in records}}))
"""


def _start(workdir, parent, overrides, devices: int):
    env = subprocess_env(devices)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir), str(parent), *overrides], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-6000:]
    return json.loads(out.strip().splitlines()[-1])


def test_mesh_elastify_matches_one_device_in_mask_and_static_slice_mode(tmp_path):
    cfg = ej.load_config("tiny", OVERRIDES[:2])
    save_model(tmp_path / "parent", cfg, ej.init_params(cfg, 0))
    # both runs at once: each is mostly single-threaded compilation
    one = _start(tmp_path / "one", tmp_path / "parent", OVERRIDES, 1)
    mesh = _start(tmp_path / "mesh", tmp_path / "parent", OVERRIDES + MESH, 8)
    ref, got = _result(one), _result(mesh)
    assert (ref["devices"], got["devices"]) == (1, 8)
    assert ref["batch_error"] is None and got["batch_error"].startswith("train.global_batch: 2 rows"), got
    # steps 1-2 sample router masks; steps 3-4 train the fixed architectures as static slices (ratio -1)
    assert [got["ratio"][s] == -1.0 for s in ("1", "2", "3", "4")] == [False, False, True, True]
    assert [got["ratio"][s] == pytest.approx(ref["ratio"][s], rel=1e-5) for s in ("1", "2")] == [True, True]
    assert sorted(got["loss"]) == sorted(ref["loss"]) == ["1", "2", "3", "4"]
    for step, loss in ref["loss"].items():
        assert got["loss"][step] == pytest.approx(loss, rel=1e-5), (step, ref["loss"], got["loss"])
    assert ref["compilations"] == got["compilations"] == 2  # one program per mode
    for layout in (got["trained"], got["resumed"]):
        assert layout["matches"] and layout["teacher_matches"], layout
        assert layout["embedding_shards"] == 4 and layout["expert_shards"] == 4, layout  # fsdp x tensor
        assert layout["teacher_shards"] == 4 and layout["router_shards"] == 1, layout
    assert got["resumed"]["start"] == 4

"""Elastify's parent never passes whole through a host: restored straight into the teacher's shardings, ranked and
permuted on the mesh (4 fake CPU devices, FSDP), with the same values as the host path."""

from __future__ import annotations

import json
import subprocess
import sys

import elastic_jax as ej
from elastic_jax.model_io import save_model
from tests.train.helpers import REPO, subprocess_env

SCRIPT = """
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding
from elastic_jax import distributed
from elastic_jax.elastic.importance import run_importance
from elastic_jax.elastic.permute import permute_params
from elastic_jax.experiment import load_experiment
from elastic_jax.model.functional import param_shapes
from elastic_jax.model_io import load_model
from elastic_jax.train.elastify import load_parent, permuted_on_mesh
from elastic_jax.train.loop import parse_experiment

parent = sys.argv[1]
spec = parse_experiment(load_experiment("tiny_elastic", ["model.pattern='M*E-'", "model.hidden_size=32",
                                                          "mesh.data=1", "mesh.fsdp=4"]))
mesh = distributed.make_mesh(spec.mesh)
shardings = distributed.param_shardings(param_shapes(spec.model), mesh)
params, _ = load_parent(parent, spec.model, mesh)
leaves, want = jax.tree.leaves(params), jax.tree.leaves(shardings)
placed = all(isinstance(x, jax.Array) and x.sharding == s for x, s in zip(leaves, want))
split = sum(len({str(s.index) for s in x.addressable_shards}) > 1 for x in leaves)
_, host, _ = load_model(parent)
rng = np.random.default_rng(0)
batches = [rng.integers(3, spec.model.vocab_size, (4, 32)).astype(np.int32) for _ in range(2)]
scores_mesh, ranking = run_importance(spec.model, params, batches)
scores_host, ranking_host = run_importance(spec.model, host, batches)
same_ranking = json.dumps(jax.tree.map(lambda a: np.asarray(a).tolist(), ranking)) == json.dumps(
    jax.tree.map(lambda a: np.asarray(a).tolist(), ranking_host))
permuted = permuted_on_mesh(params, spec.model, ranking, shardings)
expected = permute_params(host, spec.model, ranking)
exact = all(np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(permuted), jax.tree.leaves(expected), strict=True))
kept = all(x.sharding == s for x, s in zip(jax.tree.leaves(permuted), want, strict=True))
print(json.dumps({"placed": placed, "split": split, "same_ranking": same_ranking, "exact": exact, "kept": kept}))
"""


def test_parent_is_restored_ranked_and_permuted_in_the_teachers_shardings(tmp_path):
    cfg = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=32"])
    save_model(tmp_path / "parent", cfg, ej.init_params(cfg, 0))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "parent")], cwd=REPO,
                          env=subprocess_env(devices=4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["placed"] and got["split"] > 0, got  # every leaf in its declared sharding, some split over devices
    assert got["same_ranking"], got  # importance on the sharded parent ranks as on host arrays
    assert got["exact"] and got["kept"], got  # the permutation on the mesh equals the host one, still sharded

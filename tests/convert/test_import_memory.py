"""`import-hf` converts tensor by tensor: the host memory it allocates peaks at about one tensor, not the model,
and the checkpoint it writes holds exactly the parameters `from_hf` reads."""

from __future__ import annotations

import tracemalloc

import jax
import numpy as np

import elastic_jax as ej
from elastic_jax.cli import main
from elastic_jax.convert.hf import from_hf
from elastic_jax.model_io import load_model, save_model

# Two [8192, 64] fp32 tables (embeddings, lm_head: 2 MiB each) dominate; the whole model is ~2.2 of them.
CFG = ej.load_config("tiny", ["model.pattern='M*E-'", "model.hidden_size=64", "model.vocab_size=8192"])


def _peak(fn) -> int:
    """Peak bytes allocated (numpy arrays included) while `fn` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_hf_holds_one_tensor_at_a_time_and_round_trips(tmp_path):
    params = ej.init_params(CFG, 0)
    sizes = [x.nbytes for x in jax.tree.leaves(params)]
    largest, total = max(sizes), sum(sizes)
    assert total > 2 * largest
    ej.to_hf(CFG, params, tmp_path / "hf")
    del params

    peak = _peak(lambda: main(["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]))
    assert peak < 1.5 * largest, (peak, largest, total)
    whole = _peak(lambda: from_hf(tmp_path / "hf"))  # reading it all into memory: the measure sees the model
    assert whole > total, (whole, total)

    cfg, restored, _ = load_model(tmp_path / "ckpt")
    _, expected = from_hf(tmp_path / "hf")
    assert cfg == CFG
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # the scratch arrays are gone


RESTORE_SHARDED = """
import sys, jax, numpy as np
from elastic_jax import distributed
from elastic_jax.checkpoint import load_params
from elastic_jax.model_io import load_model
mesh = distributed.make_mesh({"data": 1, "fsdp": 4})
cfg, params, _ = load_model(sys.argv[1], mesh=mesh)
host = load_params(sys.argv[1])
want = distributed.param_shardings(host, mesh)
for a, b, s in zip(jax.tree.leaves(params), jax.tree.leaves(host), jax.tree.leaves(want), strict=True):
    assert isinstance(a, jax.Array) and a.sharding == s, (a.sharding, s)
    assert np.array_equal(np.asarray(a), b)
    assert all(sh.data.shape == s.shard_shape(b.shape) for sh in a.addressable_shards)
emb = params["embeddings"]["embedding"]
print("embedding shard", emb.addressable_shards[0].data.shape, "of", emb.shape)
"""


def test_parent_restores_straight_into_its_shardings(tmp_path):
    """On a 4-device FSDP mesh every parameter arrives as a jax Array in its declared sharding (each device
    holding only its block), equal to the stored values."""
    import subprocess
    import sys

    from tests.train.helpers import REPO, subprocess_env

    save_model(tmp_path / "ckpt", CFG, ej.init_params(CFG, 1))
    proc = subprocess.run([sys.executable, "-c", RESTORE_SHARDED, str(tmp_path / "ckpt")], cwd=REPO,
                          env=subprocess_env(devices=4), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "embedding shard (8192, 16) of (8192, 64)" in proc.stdout

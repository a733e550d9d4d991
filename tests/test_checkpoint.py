"""The run checkpoint: round trip, keep-last-N, fallback past unreadable steps, model mismatch, partial reads."""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
import pytest

from elastic_jax.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    abstract_like,
    load_params,
    restore_slice,
)
from elastic_jax.experiment import load_config
from elastic_jax.model.functional import param_shapes
from elastic_jax.storage_reads import count_bytes_read
from elastic_jax.train import CheckpointConfig, TrainConfig, TrainState, make_optimizer
from tests.train.helpers import assert_trees_equal

TINY = load_config("tiny")


def _state(cfg=TINY, seed=0) -> TrainState:
    """A train state with random values (no model compilation needed to test storage)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jax.numpy.asarray(rng.standard_normal(s.shape, np.float32)), param_shapes(cfg))
    optimizer, _ = make_optimizer(TrainConfig(), params)
    return TrainState.create(params, optimizer)


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def tiny_state():
    return _state()


def test_round_trip_keeps_last_n(tmp_path, tiny_state):
    ckpt = Checkpointer(tmp_path, CheckpointConfig(max_to_keep=2))
    for step in (1, 2, 3):
        ckpt.save(step, tiny_state.to_tree(), {"rows": step}, {"model": TINY.to_dict()})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    step, tree, data, meta = ckpt.restore_latest(abstract_like(tiny_state.to_tree()), {"model": TINY.to_dict()})
    assert step == 3 and data == [{"rows": 3}] and meta["model"]["pattern"] == TINY.pattern
    assert_trees_equal(_numpy(tree["params"]), _numpy(tiny_state.params))
    assert jax.tree.structure(tree["opt_state"]) == jax.tree.structure(tiny_state.opt_state)
    assert_trees_equal(load_params(tmp_path), _numpy(tiny_state.params))
    ckpt.close()


def test_unreadable_newest_step_falls_back(tmp_path, tiny_state, caplog):
    ckpt = Checkpointer(tmp_path)
    for step in (5, 10):
        ckpt.save(step, tiny_state.to_tree(), {}, {"model": TINY.to_dict()})
    ckpt.close()
    files = sorted((p for p in (tmp_path / "10" / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                   key=lambda p: p.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[:100])
    ckpt = Checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="elastic_jax.checkpoint"):
        step, *_ = ckpt.restore_latest(abstract_like(tiny_state.to_tree()), {"model": TINY.to_dict()})
    assert step == 5
    assert f"checkpoint step 10 in {tmp_path} is unreadable" in caplog.text and "falling back to step 5" in caplog.text
    assert ckpt.all_steps() == [5]  # moved aside, so step 10 can be saved again
    assert ckpt.save(10, tiny_state.to_tree(), {}, {"model": TINY.to_dict()})
    ckpt.close()


def test_other_model_config_is_one_clear_error(tmp_path, tiny_state):
    other = TINY.replace(hidden_size=32, pattern="M*E")
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, _state(other).to_tree(), {}, {"model": other.to_dict()})
    ckpt.wait()
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore_latest(abstract_like(tiny_state.to_tree()), {"model": TINY.to_dict()})
    message = str(err.value)
    assert "hidden_size (checkpoint 32, now 64)" in message and "pattern (checkpoint 'M*E', now 'M*EM-E')" in message
    # Same metadata but other shapes (e.g. a hand-edited config): named by parameter path.
    with pytest.raises(CheckpointMismatchError, match=r"embeddings/embedding: checkpoint \(264, 32\), now \(264, 64\)"):
        ckpt.check_compatible(1, {"model": other.to_dict()}, abstract_like(tiny_state.to_tree()))
    ckpt.close()


def test_other_run_settings_are_one_clear_error(tmp_path, tiny_state):
    """A resume whose settings differ from the checkpoint's is refused, naming every differing field."""
    saved = {"train.lr": 0.003, "elastic.stage2_steps": 2, "data.seed": 0}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(4, tiny_state.to_tree(), {}, {"model": TINY.to_dict(), "run": saved})
    ckpt.wait()
    abstract = abstract_like(tiny_state.to_tree())
    assert ckpt.restore_latest(abstract, {"model": TINY.to_dict(), "run": dict(saved)})[0] == 4
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore_latest(abstract, {"model": TINY.to_dict(), "run": {**saved, "train.lr": 0.001,
                                                                        "elastic.stage2_steps": 4}})
    message = str(err.value)
    assert "\n" not in message and "differing fields: elastic.stage2_steps (checkpoint 2, now 4); train.lr " \
        "(checkpoint 0.003, now 0.001)" in message
    assert ckpt.all_steps() == [4]  # refused, not skipped or moved aside
    ckpt.close()


def test_restore_slice_values_and_forms(tmp_path, tiny_state):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(7, tiny_state.to_tree(), {}, {"model": TINY.to_dict()})
    ckpt.close()
    params = _numpy(tiny_state.params)
    flat = {"layers_2/mixer/up_proj": (slice(0, 3), slice(0, 40), slice(None)), "norm_f/weight": ...,
            "layers_0/mixer/conv_kernel": (slice(None), [0, 1, 64, 65])}
    out = restore_slice(tmp_path, flat)
    np.testing.assert_array_equal(out["layers_2"]["mixer"]["up_proj"], params["layers_2"]["mixer"]["up_proj"][:3, :40])
    np.testing.assert_array_equal(out["norm_f"]["weight"], params["norm_f"]["weight"])
    np.testing.assert_array_equal(out["layers_0"]["mixer"]["conv_kernel"],
                                  params["layers_0"]["mixer"]["conv_kernel"][:, [0, 1, 64, 65]])
    tree = {"embeddings": {"embedding": (slice(None), slice(0, 16))}, "lm_head": None}
    out = restore_slice(tmp_path / "7", tree)
    assert set(out) == {"embeddings"}
    np.testing.assert_array_equal(out["embeddings"]["embedding"], params["embeddings"]["embedding"][:, :16])
    with pytest.raises(KeyError, match="not_a_param"):
        restore_slice(tmp_path, {"not_a_param": ...})


def test_restore_slice_reads_about_the_sub_models_bytes(tmp_path):
    """A 40% prefix of every elastic axis reads at most 1.2x the sub-model's bytes (tensorstore partial reads)."""
    cfg = TINY.replace(hidden_size=288, intermediate_size=576, moe_intermediate_size=288,
                       moe_shared_expert_intermediate_size=288, mamba_num_heads=10, mamba_head_dim=32,
                       mamba_n_groups=1, num_attention_heads=10, num_key_value_heads=5, head_dim=32,
                       n_routed_experts=10)
    state = _state(cfg)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state.to_tree(), {}, {"model": cfg.to_dict()})
    ckpt.close()

    def keep(n: int) -> int:  # vocabulary and conv width are not elastic
        return n if n in (cfg.vocab_size, cfg.conv_kernel) else math.ceil(0.4 * n)

    slices = jax.tree.map(lambda x: tuple(slice(0, keep(n)) for n in x.shape), state.params)
    sub_bytes = sum(math.prod(keep(n) for n in x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    full_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    with count_bytes_read() as counter:
        out = restore_slice(tmp_path, slices)
    assert sub_bytes < 0.2 * full_bytes
    assert 0 < counter.bytes <= 1.2 * sub_bytes, (counter.bytes, sub_bytes)
    ref = np.asarray(state.params["layers_2"]["mixer"]["down_proj"])
    np.testing.assert_array_equal(out["layers_2"]["mixer"]["down_proj"], ref[:4, :116, :116])

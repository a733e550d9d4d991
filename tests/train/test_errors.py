"""Bad input to run_pretrain: one clear exception each, raised before anything is compiled."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest

from elastic_jax.checkpoint import Checkpointer, CheckpointMismatchError
from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_config, load_experiment
from elastic_jax.model.functional import param_shapes
from elastic_jax.train import TrainConfig, TrainState, make_optimizer
from elastic_jax.train.loop import run_pretrain

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def no_compilation():
    """Fail if XLA compiles anything inside the block."""
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            events.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, f"compiled before raising: {events}"


def test_missing_data_path(tmp_path):
    config = load_experiment("tiny", [f"data.text_paths=('{tmp_path / 'no_such_corpus'}',)"])
    with no_compilation(), pytest.raises(ConfigError, match=r"data\.text_paths: .*no_such_corpus does not exist"):
        run_pretrain(config, str(tmp_path / "run"))


def test_sequence_longer_than_the_model_allows(tmp_path):
    config = load_experiment("tiny", ["train.seq_len=2048"])
    with no_compilation(), pytest.raises(ConfigError, match=r"train\.seq_len: 2048 exceeds model\.max_position_emb"):
        run_pretrain(config, str(tmp_path / "run"))


def test_checkpoint_of_another_model(tmp_path):
    other = load_config("tiny").replace(hidden_size=32, n_routed_experts=4)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), param_shapes(other))
    state = TrainState.create(params, make_optimizer(TrainConfig(), params)[0])
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(3, state.to_tree(), {}, {"model": other.to_dict()})
    ckpt.close()
    config = load_experiment("tiny", ["train.eval_every=0", "train.eval_prompts=0", "data.text_weight=0.0"])
    with no_compilation(), pytest.raises(CheckpointMismatchError) as err:
        run_pretrain(config, str(tmp_path))
    assert "hidden_size (checkpoint 32, now 64)" in str(err.value)
    assert "n_routed_experts (checkpoint 4, now 8)" in str(err.value)


@pytest.mark.parametrize("override, match", [
    ("train.lr=-1.0", r"train\.lr: must be a number >= 0"),
    ("train.data_loading='sideways'", r"train\.data_loading: must be one of"),
    ("mesh.tensor=0", r"mesh: sizes must be positive"),
    ("checkpoint.max_to_keep=0", r"checkpoint\.max_to_keep"),
    ("train.warmup_steps=10000", r"train\.warmup_steps: 10000 exceeds the schedule length"),
])
def test_bad_config_values(tmp_path, override, match):
    with no_compilation(), pytest.raises(ConfigError, match=match):
        run_pretrain(load_experiment("tiny", [override]), str(tmp_path))

"""One tiny elastic checkpoint per test session (elastify with the fewest steps that leave a trained router),
shared by the inference tests."""

from __future__ import annotations

import pytest

import elastic_jax as ej
from elastic_jax.experiment import load_experiment
from elastic_jax.model_io import save_model
from elastic_jax.train.elastify import run_elastify

# Every block kind (M * E -), budgets 1.0 / 0.7 / 0.4; four joint steps, the router's choice fixed after two.
OVERRIDES = ["model.pattern='M*E-'", "model.hidden_size=32", "elastic.stage1_steps=4", "elastic.stage2_steps=0",
             "elastic.stage1_seq_len=32", "elastic.importance_batches=1", "elastic.static_after=0.5",
             "train.global_batch=2", "train.eval_prompts=0", "train.eval_batches=1", "train.log_every=1",
             "train.warmup_steps=1", "train.progress_bar=False", "checkpoint.every_steps=4"]


@pytest.fixture(scope="session")
def elastic_checkpoint(tmp_path_factory):
    """Path of an elastic checkpoint directory (parent M*E-, hidden 32, budgets 1.0 / 0.7 / 0.4)."""
    root = tmp_path_factory.mktemp("elastic")
    cfg = ej.load_config("tiny", OVERRIDES[:2])
    save_model(root / "parent", cfg, ej.init_params(cfg, 0))
    run_elastify(load_experiment("tiny_elastic", OVERRIDES), str(root / "run"), str(root / "parent"))
    return root / "run" / "checkpoints"


@pytest.fixture(scope="session")
def engine(elastic_checkpoint):
    from elastic_jax.inference.engine import Engine

    return Engine.load(elastic_checkpoint)

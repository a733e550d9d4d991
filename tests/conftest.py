"""Shared test settings (float32 matmuls at full precision so parity tolerances mean what they say) and the one
tiny elastic checkpoint that the inference and conversion tests share (made once per test process)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

# Every block kind (M * E -), budgets 1.0 / 0.7 / 0.4, four joint steps with the router's choice fixed after two;
# the router's grid has widths such as 36 that bf16 grouped matmuls refuse: the export aligns them.
OVERRIDES = ["model.pattern='M*E-'", "model.hidden_size=48", "elastic.stage1_steps=4", "elastic.stage2_steps=0",
             "elastic.stage1_seq_len=32", "elastic.importance_batches=1", "elastic.static_after=0.5",
             "train.global_batch=2", "train.eval_prompts=0", "train.eval_batches=1", "train.log_every=1",
             "train.warmup_steps=1", "train.progress_bar=False", "checkpoint.every_steps=4"]


@pytest.fixture(scope="session")
def elastic_checkpoint(tmp_path_factory):
    """Path of an elastic checkpoint directory (parent M*E-, hidden 48, budgets 1.0 / 0.7 / 0.4)."""
    import elastic_jax as ej
    from elastic_jax.experiment import load_experiment
    from elastic_jax.model_io import save_model
    from elastic_jax.train.elastify import run_elastify

    root = tmp_path_factory.mktemp("elastic")
    cfg = ej.load_config("tiny", OVERRIDES[:2])
    save_model(root / "parent", cfg, ej.init_params(cfg, 0))
    run_elastify(load_experiment("tiny_elastic", OVERRIDES), str(root / "run"), str(root / "parent"))
    return root / "run" / "checkpoints"

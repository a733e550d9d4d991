"""Elastify the reasoning parent (configs/reasoning.py) into nested 100% / 70% / 40% models of *active* parameters
(the budget-control experiment: smaller budgets are cheaper per token)."""

import importlib.util
from pathlib import Path

import ml_collections


def _parent() -> ml_collections.ConfigDict:
    path = Path(__file__).with_name("reasoning.py")
    spec = importlib.util.spec_from_file_location("elastic_jax_config_reasoning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _parent()  # the parent's model, data, mesh and checkpoint sections
    # The run's length is the elastic schedule (stage1_steps + stage2_steps): train.total_steps is derived from it.
    del config.train["total_steps"]
    config.train.lr = 1e-3
    config.train.warmup_steps = 20
    # No evaluation during the run (greedy 64-token answers per budget cost more than the training on a CPU); the
    # closing table answers 32 held-out problems per budget.
    config.train.eval_every = 0
    config.train.eval_prompts = 32
    config.checkpoint.every_steps = 100
    config.elastic = ml_collections.ConfigDict(dict(
        stage1_steps=100, stage2_steps=40, stage1_seq_len=128, stage2_seq_len=256, stage2_weights=(0.5, 0.3, 0.2),
        static_after=0.5, ce_weight=0.0, kd_temperature=1.0, importance_batches=8, permute=True,
    ))
    config.elastic.router = ml_collections.ConfigDict(dict(
        budgets=(1.0, 0.7, 0.4), metric="active_params",
        axes=("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn"),
        num_choices=8, min_fraction=0.25, heterogeneous=False, tolerance=0.05,
        width_multiple=None, hidden_dim=128, tau_start=1.0, tau_end=0.05, scale_start=1.0, scale_end=10.0, hard=True,
        attention_mode="kv_groups", loss_weight=1.0, lr_multiplier=100.0,
    ))
    return config

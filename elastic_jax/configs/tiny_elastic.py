"""Elastify the tiny parent into nested 100% / 70% / 40% models (the quickstart's elastic stage)."""

import importlib.util
from pathlib import Path

import ml_collections


def _tiny() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("elastic_jax_config_tiny", Path(__file__).with_name("tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _tiny()  # the parent's model, data, mesh and checkpoint sections
    # The run's length is the elastic schedule (stage1_steps + stage2_steps): train.total_steps is derived from it.
    del config.train["total_steps"]
    config.train.lr = 1e-3
    config.train.warmup_steps = 20
    config.train.eval_prompts = 64
    config.checkpoint.every_steps = 100
    # The two-stage schedule and joint loss (elastic_jax/elastic/config.py: ElasticConfig).
    config.elastic = ml_collections.ConfigDict(dict(
        stage1_steps=200, stage2_steps=100, stage1_seq_len=128, stage2_seq_len=256, stage2_weights=(0.5, 0.3, 0.2),
        static_after=0.5, ce_weight=0.0, kd_temperature=1.0, importance_batches=8, permute=True,
        importance_order="importance",  # "random": a seeded random order instead (the ablation of importance)
    ))
    # Budgets, candidate grid, Gumbel schedules and masks of the router (elastic_jax/elastic/router/config.py:
    # RouterConfig); every field can be overridden, e.g. --config.elastic.router.tau_end=0.1.
    config.elastic.router = ml_collections.ConfigDict(dict(
        budgets=(1.0, 0.7, 0.4), metric="total_params",
        axes=("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn"),
        num_choices=8, min_fraction=0.25, heterogeneous=False, tolerance=0.05,
        nested=False,  # True: each budget's widths within the next larger budget's (0.4 a slice of 0.7 too)
        width_multiple=None,  # candidate widths' multiple; None: the coarsest power of two <= 128 that keeps 8 choices
        hidden_dim=128, tau_start=1.0, tau_end=0.05, scale_start=1.0, scale_end=10.0, hard=True,
        attention_mode="kv_groups", loss_weight=1.0, lr_multiplier=100.0,
    ))
    return config

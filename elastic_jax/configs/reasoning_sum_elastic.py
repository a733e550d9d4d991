"""Elastify the chain_sum parent (configs/reasoning_sum.py) into nested 100% / 70% / 40% models of active parameters:
the budget-control experiment where a larger answering model answers better from the same thoughts."""

import ml_collections

from elastic_jax.configs.reasoning_elastic import get_config as reasoning_elastic_config
from elastic_jax.configs.reasoning_sum import get_config as parent_config


def get_config() -> ml_collections.ConfigDict:
    config = reasoning_elastic_config()  # the router, budgets, stages and learning rate of the reasoning run
    parent = parent_config()
    config.data = parent.data
    config.train.seq_len = parent.train.seq_len
    config.train.eval_prompts = 64
    config.train.eval_max_new_tokens = parent.train.eval_max_new_tokens
    config.elastic.stage1_steps = 90
    config.elastic.stage2_steps = 45
    config.elastic.stage1_seq_len = 128
    config.elastic.stage2_seq_len = 128
    return config

"""Budget control where answering needs size: the reasoning parent's model (configs/reasoning.py) trained only on
the "chain_sum" task. The trace runs 2-5 additions/subtractions mod 10; the answer is the sum of the step results,
which the trace never shows, so the answering model must compute it from the thoughts (docs/results.md, "Budget
control where answering needs size"; configs/reasoning_sum_elastic.py elastifies it)."""

import ml_collections

from elastic_jax.configs.reasoning import get_config as reasoning_config
from elastic_jax.data.reasoning import ANSWER_PRESETS


def get_config() -> ml_collections.ConfigDict:
    config = reasoning_config()  # the same ~0.9M-parameter model, mesh and checkpoint sections
    # A sample is at most ~60 tokens (prompt 20, trace 6 per step, answer 2), so 128-token rows hold two or more.
    config.train.seq_len = 128
    # The warmup + cosine schedule is laid out over 1200 steps and the run stops at 900 (about 15 minutes on one
    # core of an idle 2-core VM, 35 under a load of 20-50).
    config.train.total_steps = 900
    config.train.schedule_steps = 1200
    config.train.eval_every = 900
    config.train.eval_prompts = 64
    config.train.eval_max_new_tokens = 40
    config.checkpoint.every_steps = 300
    config.data.reasoning = dict(**ANSWER_PRESETS["chain_sum"], eval_fraction=0.1, seed=0)
    return config

"""The parent of "Is nesting worth it?" (benchmarks/reproduce.py): `tiny` at 1.5x its width (519K parameters, 298K
active) on the "medium" reasoning preset, where models of its smaller budgets' sizes trained alone fall behind it.
On `tiny`'s "easy" task a 102K model nearly matches the 246K parent, so nesting cannot show what it is worth there.
The default 2000 steps (4.1M tokens) are meant to train it until models of its 0.7 and 0.4 budgets' shapes,
trained alone for the same tokens plus one elastic run's, no longer beat it; docs/results.md ("The teacher") says
whether they do.

`get_config()` is the parent's pretraining experiment; `get_config("elastic")` is `tiny_elastic`'s elastification
(budgets 1.0 / 0.7 / 0.4 of total parameters) of this parent (benchmarks/reproduce.py sets the schedule's steps).
"""

import importlib.util
from pathlib import Path

import ml_collections

WIDER = dict(hidden_size=96, mamba_head_dim=24, head_dim=24, intermediate_size=192, moe_intermediate_size=96,
             moe_shared_expert_intermediate_size=96)
MEDIUM = dict(min_steps=2, max_steps=4, max_operand=20, ops="+-*", modulus=100)  # data/reasoning.py PRESETS


def _load(name: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"elastic_jax_config_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(kind: str = "") -> ml_collections.ConfigDict:
    config = _load("tiny_elastic" if kind == "elastic" else "tiny")
    config.model.update(WIDER)
    config.data.reasoning.update(MEDIUM)
    # traces of up to ~50 tokens; evaluation is benchmarks/reproduce.py's own, at the end of each run
    config.train.update(eval_max_new_tokens=64, log_every=50, eval_every=0, progress_bar=False)
    if kind != "elastic":
        config.train.total_steps = 2000
    config.checkpoint.update(every_steps=250, max_to_keep=2)
    return config

"""The "Does nesting work?" experiment's parent (benchmarks/reproduce.py): `tiny` at 1.5x its width (519K parameters,
298K active) on the "medium" reasoning preset, where a model half the parent's size trained alone (`tiny`, 246K)
falls clearly behind it. On `tiny`'s "easy" task a 102K model nearly matches the 246K parent, so nesting cannot show
what it is worth there; here, after 600 steps, the 519K parent's eval loss was 1.149 against 1.233 for `tiny`
(`elastic-jax pretrain --config reproduce --config.train.total_steps=600`, and with `--config reproduce` at tiny's
widths), and after the default 1500 steps the parent reached 0.909 and 70.3% accuracy (64 held-out problems).

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
        config.train.total_steps = 1500
    config.checkpoint.update(every_steps=250, max_to_keep=2)
    return config

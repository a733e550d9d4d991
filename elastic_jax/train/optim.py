"""AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay only where it belongs.

Weight decay skips rank-1 parameters (norm weights, biases, A_log, D, dt_bias). Routing buffers (the block
kinds' `frozen` weights, elastic_jax/model/blocks.py: `e_score_correction_bias`) are not trained by gradients at
all: their updates are zero.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from elastic_jax.distributed import path_str
from elastic_jax.experiment import TrainConfig
from elastic_jax.model.blocks import frozen_names

FROZEN_NAMES = frozen_names()


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """0 -> lr over warmup_steps, then cosine down to lr * min_lr_ratio at the schedule's end."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.decay_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.min_lr_ratio)


def param_labels(params: Any) -> Any:
    """'frozen' for routing buffers, 'no_decay' for rank-0/1 params, 'decay' for matrices and tensors."""
    def label(path, leaf) -> str:
        name = path_str(path).split("/")[-1]
        if name in FROZEN_NAMES:
            return "frozen"
        return "decay" if len(leaf.shape) >= 2 else "no_decay"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: TrainConfig, params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) for a parameter pytree (arrays or ShapeDtypeStructs, used only for its labels)."""
    schedule = learning_rate_schedule(cfg)

    def adamw(weight_decay: float) -> optax.GradientTransformation:
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=weight_decay)

    labelled = optax.multi_transform(
        {"decay": adamw(cfg.weight_decay), "no_decay": adamw(0.0), "frozen": optax.set_to_zero()},
        param_labels(params))
    chain = [labelled] if cfg.clip_norm <= 0 else [optax.clip_by_global_norm(cfg.clip_norm), labelled]
    return optax.chain(*chain), schedule

"""Pretraining: config sections, train state, optimizer, losses, the jitted step and the loop (`run_pretrain`)."""

from elastic_jax.checkpoint import CheckpointConfig
from elastic_jax.experiment import TrainConfig
from elastic_jax.train.losses import cross_entropy, kl_forward
from elastic_jax.train.optim import learning_rate_schedule, make_optimizer, param_labels
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import TraceCounter, make_eval_step, make_train_step

__all__ = [
    "CheckpointConfig", "TraceCounter", "TrainConfig", "TrainState", "cross_entropy", "kl_forward",
    "learning_rate_schedule", "make_eval_step", "make_optimizer", "make_train_step", "param_labels", "run_pretrain",
]


def __getattr__(name: str):
    if name == "run_pretrain":  # imported lazily: the loop pulls in the data pipeline and checkpointing
        from elastic_jax.train.loop import run_pretrain

        return run_pretrain
    raise AttributeError(name)

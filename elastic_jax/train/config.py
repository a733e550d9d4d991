"""The `train` section of an experiment config: a frozen, validated value with clear errors."""

from __future__ import annotations

import dataclasses

from elastic_jax import schema
from elastic_jax.config import ModelConfig
from elastic_jax.model.layer_groups import REMAT_POLICIES, LayerExecution
from elastic_jax.schema import ConfigError, invalid

DATA_LOADING = ("per_process", "global")


@dataclasses.dataclass(frozen=True)
class TrainConfig(schema.Section):
    """Optimisation, batch shape, logging and evaluation settings of a pretraining run.

    data_loading: "per_process" reads a separate stream per process (scales to many hosts); "global" has
    every process read the whole global batch and keep its rows, so results do not depend on the process count.
    schedule_steps: length of the warmup + cosine schedule; 0 means total_steps (set it to stop a run early
    on the same schedule, or to share one compiled step between runs of different lengths).
    eval_every / checkpoint cadence of 0 disables it; eval_prompts is the number of reasoning problems
    answered greedily for the accuracy figure.
    """

    SECTION = "train"

    seed: int = 0  #: seed of the initialisation and of the data order
    seq_len: int = 128  #: tokens per training sequence
    global_batch: int = 16  #: sequences per step over all processes
    total_steps: int = 500  #: optimizer steps (derived from the schedule in an elastic run)
    schedule_steps: int = 0  #: length of the warmup + cosine schedule (0: total_steps)
    lr: float = 3e-3  #: peak learning rate (AdamW)
    warmup_steps: int = 50  #: linear warmup steps before the cosine decay
    min_lr_ratio: float = 0.1  #: final learning rate over the peak
    weight_decay: float = 0.1  #: AdamW weight decay
    b1: float = 0.9  #: AdamW beta1
    b2: float = 0.95  #: AdamW beta2
    eps: float = 1e-8  #: AdamW epsilon
    clip_norm: float = 1.0  #: global gradient-norm clip (0: off)
    log_every: int = 10  #: steps between metric records
    eval_every: int = 100  #: steps between evaluations (0: off)
    eval_batches: int = 4  #: held-out batches per evaluation
    eval_prompts: int = 64  #: reasoning problems answered greedily for the accuracy figure
    eval_max_new_tokens: int = 32  #: generation cap per evaluation problem
    data_loading: str = "per_process"  #: per_process: one stream per process; global: rows of one global batch
    progress_bar: bool = True  #: show a progress bar on the terminal
    remat: str = "none"  #: recompute activations in the backward pass: none, block (keep block inputs only), dots
    scan_layers: bool = False  #: run repeated layer groups as one scan (compile time independent of depth)
    micro_batches: int = 1  #: accumulate gradients over this many slices of each global batch (same step)

    def __post_init__(self):
        ints = ("seed", "seq_len", "global_batch", "micro_batches", "total_steps", "schedule_steps", "warmup_steps",
                "log_every", "eval_every", "eval_batches", "eval_prompts", "eval_max_new_tokens")
        for name in ints:
            value = getattr(self, name)
            positive = name in ("seq_len", "global_batch", "micro_batches", "total_steps", "log_every")
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if positive else 0):
                raise invalid(self, name, f"must be an integer {'>= 1' if positive else '>= 0'}, got {value!r}")
        for name in ("lr", "weight_decay", "eps", "clip_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise invalid(self, name, f"must be a number >= 0, got {value!r}")
        for name in ("min_lr_ratio", "b1", "b2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise invalid(self, name, f"must be in [0, 1], got {value!r}")
        if self.warmup_steps > self.decay_steps:
            raise invalid(self, "warmup_steps", f"{self.warmup_steps} exceeds the schedule length {self.decay_steps} "
                          "(train.schedule_steps, or train.total_steps when that is 0)")
        if self.remat not in REMAT_POLICIES:
            raise invalid(self, "remat", f"must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        if not isinstance(self.scan_layers, bool):
            raise invalid(self, "scan_layers", f"must be true or false, got {self.scan_layers!r}")
        if self.data_loading not in DATA_LOADING:
            raise invalid(self, "data_loading", f"must be one of {DATA_LOADING}, got {self.data_loading!r}")

    @property
    def execution(self) -> LayerExecution:
        """How the training passes run the layer stack (rematerialisation, layer scan); values are unchanged."""
        return LayerExecution(remat=self.remat, scan_layers=self.scan_layers)

    @property
    def decay_steps(self) -> int:
        """Steps of the learning-rate schedule."""
        return self.schedule_steps or self.total_steps

    def check_model(self, model: ModelConfig) -> None:
        """Raise ConfigError when the batch shape does not fit the model (before anything is compiled)."""
        if self.seq_len > model.max_position_embeddings:
            raise ConfigError(f"train.seq_len: {self.seq_len} exceeds model.max_position_embeddings="
                              f"{model.max_position_embeddings}; use a seq_len <= {model.max_position_embeddings}")

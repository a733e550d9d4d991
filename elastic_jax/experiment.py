"""An experiment: one tree of frozen config sections, read from ml_collections configs (configs/*.py) with
`--config.a.b=value` overrides.

    ExperimentConfig(model, train, data, checkpoint, mesh, elastic=ElasticConfig(..., router=RouterConfig(...)))

Each package keeps its own section (data/config.py, elastic/config.py, checkpoint.py); the `train` and `mesh`
sections live here, below the training code that reads the whole tree.

`ExperimentConfig.from_dict` validates the whole tree before anything is compiled; every error is one
`ConfigError` naming the dotted path of the field (`elastic.router.tau_end: ...`). Overrides may set any field the
schema has (`--config.elastic.router.hard=False`), also one the config file leaves at its default.

No value is silently replaced: an elastic experiment's length is its schedule (elastic.stage1_steps +
elastic.stage2_steps), so `train.total_steps` is derived from it, and setting it to anything else is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from elastic_jax import schema
from elastic_jax.checkpoint import CheckpointConfig
from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.data.config import DataConfig
from elastic_jax.distributed import DEFAULT_MESH, check_mesh_config
from elastic_jax.elastic.config import ElasticConfig
from elastic_jax.model.layer_groups import REMAT_POLICIES, LayerExecution
from elastic_jax.schema import invalid

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped in the package (configs/ links here)
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


@dataclasses.dataclass(frozen=True)
class MeshConfig(schema.Section):
    """Device mesh axis sizes; one -1 takes the remaining devices (elastic_jax/distributed.py)."""

    SECTION = "mesh"

    data: int = DEFAULT_MESH["data"]  #: data-parallel axis (-1: the remaining devices)
    fsdp: int = DEFAULT_MESH["fsdp"]  #: parameter-sharding (FSDP) axis
    tensor: int = DEFAULT_MESH["tensor"]  #: tensor-parallel axis (heads, FFN widths)
    expert: int = DEFAULT_MESH["expert"]  #: expert-parallel axis

    def __post_init__(self):
        check_mesh_config(self.to_dict())


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(schema.Section):
    """Every section of an experiment. `elastic` is None for pretraining-only experiments."""

    SECTION = ""

    model: ModelConfig | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    elastic: ElasticConfig | None = None

    def __post_init__(self):
        if self.model is None:
            raise invalid(self, "model", "missing: every experiment needs a model section")
        self.train.check_model(self.model)
        if self.elastic is not None and self.train.total_steps != self.elastic.total_steps:
            raise _length_conflict(self.train.total_steps, self.elastic)

    @classmethod
    def from_dict(cls, data: Any, path: str | None = None) -> ExperimentConfig:
        """The validated tree of a (nested, ml_collections or plain) mapping; train.total_steps of an elastic
        experiment is derived from its schedule."""
        data = dict(schema.plain(data))
        if data.get("elastic") is not None:
            elastic = ElasticConfig.from_dict(data["elastic"])
            train = dict(schema.plain(data.get("train")))
            if train.setdefault("total_steps", elastic.total_steps) != elastic.total_steps:
                raise _length_conflict(train["total_steps"], elastic)
            data.update(elastic=elastic, train=train)
        return schema.from_dict(cls, data, "")

    def require_elastic(self, verb: str = "elastify") -> ElasticConfig:
        """The elastic section, or a ConfigError saying that `verb` needs one."""
        if self.elastic is None:
            raise ConfigError(f"missing: {verb} needs an elastic section (budgets, router and schedule; see "
                              "configs/tiny_elastic.py)", section="elastic")
        return self.elastic


def _length_conflict(total_steps: int, elastic: ElasticConfig) -> ConfigError:
    return ConfigError(f"{total_steps} conflicts with the elastic schedule: an elastic run is elastic.stage1_steps + "
                       f"elastic.stage2_steps = {elastic.total_steps} steps long; leave train.total_steps out (it is "
                       "derived) or set the stages", section="train.total_steps")


def parse_experiment_config(config: Any) -> ExperimentConfig:
    """The validated ExperimentConfig of a ConfigDict / dict (see ExperimentConfig.from_dict)."""
    return ExperimentConfig.from_dict(config)


def resolve_config_path(path_or_name: str) -> Path:
    """A path to a config file, or the name of one in configs/ ("tiny", "small", ...)."""
    path = Path(path_or_name)
    if path.suffix == ".py" and path.exists():
        return path
    named = CONFIG_DIR / f"{path_or_name}.py"
    if named.exists():
        return named
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise ConfigError(f"--config: {path_or_name!r} is neither a config file nor a known name; known: {known}")


def _parse_value(text: str):
    if text.lower() in ("true", "false"):  # as a shell user writes them (Python's True / False also work)
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply "a.b=value" (or "--config.a.b=value") overrides. A key may be one the config file sets or any field
    of the experiment schema (missing sections are added); anything else raises the unknown-field ConfigError.
    Values are checked when the tree is parsed (ExperimentConfig.from_dict)."""
    for item in overrides:
        text = item.removeprefix("--").removeprefix("config.")
        if "=" not in text:
            raise ConfigError(f"override {item!r}: expected --config.<path>=<value>")
        key, value = text.split("=", 1)
        parts = _schema_path(config, key.split("."))
        node = config
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
        with node.ignore_type():
            node[parts[-1]] = _parse_value(value)
    return config


def _schema_path(config: ml_collections.ConfigDict, parts: list[str]) -> list[str]:
    """The path an override sets: as given when the config file has it (also an older layout), else checked
    against the schema, where a field that has moved (elastic.budgets -> elastic.router.budgets) is followed."""
    node = config
    for part in parts:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            break
        node = node[part]
    else:
        return parts
    new, _ = schema.walk(ExperimentConfig, parts)
    if new != parts:
        log.warning("--config.%s is now --config.%s", ".".join(parts), ".".join(new))
    return new


def load_experiment(path_or_name: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict that a config file's get_config() returns, with overrides applied."""
    path = resolve_config_path(path_or_name)
    spec = importlib.util.spec_from_file_location(f"elastic_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    config = module.get_config()
    return apply_overrides(config, overrides)


def model_config_from(section: Any) -> ModelConfig:
    """ModelConfig from a ConfigDict/dict `model` section (lists become tuples, 'inf' becomes math.inf)."""
    return ModelConfig.from_dict(schema.plain(section))


def load_config(path_or_name: str, overrides: Sequence[str] = ()) -> ModelConfig:
    """The validated ModelConfig of a config file or name (its `model` section)."""
    config = load_experiment(path_or_name, overrides)
    if "model" not in config:
        raise ConfigError(f"{path_or_name}: the config has no 'model' section")
    return model_config_from(config.model)

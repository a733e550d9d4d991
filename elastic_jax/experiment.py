"""An experiment: one tree of frozen config sections, read from ml_collections configs (configs/*.py) with
`--config.a.b=value` overrides.

    ExperimentConfig(model, train, data, checkpoint, mesh, elastic=ElasticConfig(..., router=RouterConfig(...)))

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
from elastic_jax.schema import invalid
from elastic_jax.train.config import TrainConfig

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped in the package (configs/ links here)


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

"""Loading ml_collections experiment configs (configs/*.py) with `--config.a.b=value` overrides."""

from __future__ import annotations

import ast
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from elastic_jax.config import ConfigError, ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply "a.b=value" (or "--config.a.b=value") overrides; unknown keys raise ConfigError naming them."""
    for item in overrides:
        text = item.removeprefix("--").removeprefix("config.")
        if "=" not in text:
            raise ConfigError(f"override {item!r}: expected --config.<path>=<value>")
        key, value = text.split("=", 1)
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise ConfigError(f"override {item!r}: unknown config section {part!r}; known: {sorted(node.keys())}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown field {key!r}; known: {sorted(node.keys())}")
        with node.ignore_type():
            node[parts[-1]] = _parse_value(value)
    return config


def load_experiment(path_or_name: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict that a config file's get_config() returns, with overrides applied."""
    path = resolve_config_path(path_or_name)
    spec = importlib.util.spec_from_file_location(f"elastic_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    config = module.get_config()
    return apply_overrides(config, overrides)


def model_config_from(section) -> ModelConfig:
    """ModelConfig from a ConfigDict/dict `model` section (lists become tuples, 'inf' becomes math.inf)."""
    data = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    if "time_step_limit" in data:
        limit = data["time_step_limit"]
        data["time_step_limit"] = tuple(math.inf if v in ("inf", math.inf) else float(v) for v in limit)
    return ModelConfig.from_dict(data)


def load_config(path_or_name: str, overrides: Sequence[str] = ()) -> ModelConfig:
    """The validated ModelConfig of a config file or name (its `model` section)."""
    config = load_experiment(path_or_name, overrides)
    if "model" not in config:
        raise ConfigError(f"{path_or_name}: the config has no 'model' section")
    return model_config_from(config.model)

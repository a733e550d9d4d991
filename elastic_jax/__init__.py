"""elastic_jax: many-in-one elastic Nemotron-H (hybrid Mamba-2 / attention / MoE) language models in JAX.

Importing the package changes nothing in the process and imports no jax: the names below load on first use, and
the process settings the command line wants (glibc malloc, JAX_PLATFORMS) are one explicit call, `tune_process()`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    "ConfigError": "config", "ModelConfig": "config",
    "from_hf": "convert.hf", "to_hf": "convert.hf", "ConversionError": "convert.hf_config",
    "count_params": "elastic.accounting",
    "load_config": "experiment", "load_experiment": "experiment",
    "decode_step": "inference.generate", "generate": "inference.generate", "prefill": "inference.generate",
    "InputError": "model.functional", "apply": "model.functional", "init_params": "model.functional",
    "param_shapes": "model.functional",
    "tune_process": "process",
}
__all__ = [
    "ConfigError", "ConversionError", "InputError", "ModelConfig", "apply", "count_params", "decode_step",
    "from_hf", "generate", "init_params", "load_config", "load_experiment", "param_shapes", "prefill", "to_hf",
    "tune_process", "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from elastic_jax.config import ConfigError, ModelConfig
    from elastic_jax.convert.hf import from_hf, to_hf
    from elastic_jax.convert.hf_config import ConversionError
    from elastic_jax.elastic.accounting import count_params
    from elastic_jax.experiment import load_config, load_experiment
    from elastic_jax.inference.generate import decode_step, generate, prefill
    from elastic_jax.model.functional import InputError, apply, init_params, param_shapes
    from elastic_jax.process import tune_process


def __getattr__(name: str) -> Any:
    """A public name (or a subpackage, as `elastic_jax.convert`), imported when first asked for."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

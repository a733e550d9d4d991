"""elastic_jax: many-in-one elastic Nemotron-H (hybrid Mamba-2 / attention / MoE) language models in JAX."""
# ruff: noqa: E402  (the allocator settings must come before the first import of jax)

# Before anything imports jax: XLA:CPU's worker threads must start under these malloc settings.
from elastic_jax.host_allocator import tune_host_allocator
from elastic_jax.platforms import skip_absent_tpu

tune_host_allocator()
skip_absent_tpu()

from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.convert.hf import from_hf, to_hf
from elastic_jax.convert.hf_config import ConversionError
from elastic_jax.elastic.accounting import count_params
from elastic_jax.experiment import load_config, load_experiment
from elastic_jax.inference.generate import decode_step, generate, prefill
from elastic_jax.model.functional import InputError, apply, init_params, param_shapes

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "ConversionError", "InputError", "ModelConfig", "apply", "count_params", "decode_step",
    "from_hf", "generate", "init_params", "load_config", "load_experiment", "param_shapes", "prefill", "to_hf",
    "__version__",
]

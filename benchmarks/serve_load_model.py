"""The load benchmark's model when no --checkpoint is given: a random parent (`small` by default) with an untrained
router over budgets of active parameters, saved once as an elastic checkpoint and reused. Serving speed depends on
the architecture, not on training (the benchmark ignores eos), and llama.cpp runs the GGUF export only when the
pattern does not mix dense `-` and MoE `E` layers: hence small's pattern with its `-` made `E`, as in
benchmarks/decode_llamacpp.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DEFAULT_PATTERN = "MEM*EMEM*EME"  # small's MEM*EMEM*EM- without the dense layer


def checkpoint_dir(cache: Path, config: str, pattern: str, budgets: list[float]) -> Path:
    """Where the model of these settings is kept (one directory per setting)."""
    name = f"{config}-{pattern.replace('*', 'A').replace('-', 'D')}-{'_'.join(f'{b:g}' for b in budgets)}"
    return cache / re.sub(r"[^\w.-]", "_", name)


def cached_checkpoint(cache: Path, config: str, pattern: str, budgets: list[float]) -> Path:
    """The elastic checkpoint of a random `config` parent with `pattern`, made on first use."""
    path = checkpoint_dir(cache, config, pattern, budgets)
    done = path / "made.json"
    if done.exists():
        return path
    import jax
    from decode import random_engine  # a sibling script (imports torch: only when a model is made)

    from elastic_jax.model_io import save_model

    engine = random_engine(config, budgets, (f"model.pattern='{pattern}'",))
    params = {"model": jax.device_get(engine.params), "router": jax.device_get(engine.router_params)}
    save_model(path / "checkpoints", engine.cfg, params, {"elastic": engine.meta["elastic"]}, overwrite=True)
    done.write_text(json.dumps({"config": config, "pattern": pattern, "budgets": budgets}) + "\n")
    print(f"made a random {config} parent ({pattern}) with an untrained router: {path / 'checkpoints'}", flush=True)
    return path

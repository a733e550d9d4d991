"""Cut one budget out of an elastic checkpoint: the trained architecture of a trained budget, or the router's
argmax for a budget between two trained ones; written as our checkpoint or as a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError, ElasticSpec


def budget_spec(cfg: ModelConfig, params: dict, meta: dict, budget: float) -> ElasticSpec:
    """The architecture of `budget` recorded in (or routed from) an elastic checkpoint's metadata."""
    elastic = meta.get("elastic") or {}
    if "router" not in elastic or "router" not in params:
        raise ElasticError("slice: this checkpoint has no router (it is not an elastic checkpoint); "
                           "run `elastic-jax elastify` first")
    if not 0.0 < budget <= 1.0:
        raise ElasticError(f"slice: --budget must be in (0, 1], got {budget}")
    specs = elastic.get("specs") or {}
    for key, spec in specs.items():
        if abs(float(key) - budget) < 1e-9:
            return ElasticSpec.from_dict(spec)
    router = Router(cfg, RouterConfig(**elastic["router"]))
    return router.spec_for(params["router"], budget)


def slice_checkpoint(path: str | Path, budget: float, out: str | Path, fmt: str = "elastic_jax"
                     ) -> tuple[ElasticSpec, ModelConfig]:
    """Write the nested model of `budget` to `out` (format "elastic_jax" or "hf")."""
    from elastic_jax.convert.hf import to_hf
    from elastic_jax.model_io import load_model, save_model

    cfg, params, meta = load_model(path)
    spec = budget_spec(cfg, params, meta, budget)
    sub_params, sub_cfg = slice_params(params["model"], cfg, spec)
    if fmt == "hf":
        to_hf(sub_cfg, sub_params, out)
    else:
        extra = {k: v for k, v in meta.items() if k in ("tokenizer",)}
        save_model(out, sub_cfg, sub_params, {**extra, "sliced_from": {"budget": budget, "spec": spec.to_dict()}})
    return spec, sub_cfg

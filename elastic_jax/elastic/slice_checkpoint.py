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
    if not 0.0 < budget <= 1.0:
        raise ElasticError(f"slice: --budget must be in (0, 1], got {budget}")
    if "router" not in elastic or "router" not in params:
        return searched_spec(cfg, params, meta, budget)
    specs = elastic.get("specs") or {}
    for key, spec in specs.items():
        if abs(float(key) - budget) < 1e-9:
            return ElasticSpec.from_dict(spec)
    # checkpoints from before aligned candidate widths routed over exact fractions (width_multiple 1)
    router = Router(cfg, RouterConfig(**{"width_multiple": 1, **elastic["router"]}))
    return router.spec_for(params["router"], budget)


def searched_spec(cfg: ModelConfig, params: dict, meta: dict, budget: float) -> ElasticSpec:
    """Router-free (Minitron-style) choice for a ranked parent: the best zero-shot grid spec near the budget."""
    import numpy as np

    from elastic_jax.data import DataConfig, load_tokenizer, make_eval_batches
    from elastic_jax.data.tokenizer import tokenizer_from_dict
    from elastic_jax.elastic.search import search_spec
    from elastic_jax.elastic.spec import Budget

    if (meta.get("elastic") or {}).get("ranking") is None:
        raise ElasticError("slice: this checkpoint is neither elastic (no router) nor importance-ranked; run "
                           "`elastic-jax importance` (then slice by search) or `elastic-jax elastify` first")
    tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else load_tokenizer(None)
    raw = make_eval_batches(DataConfig(), tokenizer, 128, 8, 2, 0, 1, max_seq_len=cfg.max_position_embeddings)
    batches = [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in raw]
    return search_spec(cfg, params, Budget(budget), batches, max_candidates=32)


def slice_checkpoint(path: str | Path, budget: float, out: str | Path, fmt: str = "elastic_jax"
                     ) -> tuple[ElasticSpec, ModelConfig]:
    """Write the nested model of `budget` to `out` (format "elastic_jax" or "hf")."""
    from elastic_jax.convert.hf import to_hf
    from elastic_jax.model_io import load_model, save_model

    cfg, params, meta = load_model(path)
    spec = budget_spec(cfg, params, meta, budget)
    sub_params, sub_cfg = slice_params(params.get("model", params) if "router" in params else params, cfg, spec)
    if fmt == "hf":
        to_hf(sub_cfg, sub_params, out)
    else:
        extra = {k: v for k, v in meta.items() if k in ("tokenizer",)}
        save_model(out, sub_cfg, sub_params, {**extra, "sliced_from": {"budget": budget, "spec": spec.to_dict()}})
    return spec, sub_cfg

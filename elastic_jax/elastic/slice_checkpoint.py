"""Cut one budget out of an elastic checkpoint: the trained architecture of a trained budget, or the router's
argmax for a budget between two trained ones; written as our checkpoint or as a Hugging Face directory.

Only the sub-model's bytes are read: `read_plan` finds, for every parameter of the nested model, which indices of
which parent array `slice_params` takes, and `restore_slice` reads just those chunks from storage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.checkpoint import load_params, restore_slice, stored_shapes
from elastic_jax.config import ModelConfig
from elastic_jax.distributed import path_str
from elastic_jax.elastic.accounting import count_params, format_count
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import Budget, ElasticError, ElasticSpec
from elastic_jax.paths import unflatten


def _progress(message: str) -> None:
    """A progress line on stderr (stdout keeps the result) for the steps that take seconds on a large parent."""
    print(message, file=sys.stderr, flush=True)


def budget_spec(cfg: ModelConfig, params: dict, meta: dict, budget: float) -> ElasticSpec:
    """The architecture of `budget` recorded in (or routed from) an elastic checkpoint's metadata.

    `params` needs only what the answer reads: nothing for a trained budget, `params["router"]` for one in between,
    and the whole parent for a ranked parent without a router (a zero-shot search).
    """
    elastic = meta.get("elastic") or {}
    if not 0.0 < budget <= 1.0:
        raise ElasticError(f"slice: --budget must be in (0, 1], got {budget}")
    specs = elastic.get("specs") or {}
    if "router" in elastic:
        for key, spec in specs.items():
            if abs(float(key) - budget) < 1e-9:
                return ElasticSpec.from_dict(spec)
    if "router" not in elastic or "router" not in params:
        return searched_spec(cfg, params, meta, budget)
    # checkpoints from before aligned candidate widths routed over exact fractions (width_multiple 1)
    router = Router(cfg, RouterConfig(**{"width_multiple": 1, **elastic["router"]}))
    return router.spec_for(params["router"], budget)


def searched_spec(cfg: ModelConfig, params: dict, meta: dict, budget: float) -> ElasticSpec:
    """Router-free (Minitron-style) choice for a ranked parent: the best zero-shot grid spec near the budget."""
    from elastic_jax.data.calibration import calibration_batches, calibration_source
    from elastic_jax.elastic.search import search_spec
    from elastic_jax.elastic.spec import Budget

    if (meta.get("elastic") or {}).get("ranking") is None:
        raise ElasticError("slice: this checkpoint is neither elastic (no router) nor importance-ranked; run "
                           "`elastic-jax importance` (then slice by search) or `elastic-jax elastify` first")
    data, tokenizer = calibration_source(meta, cfg.vocab_size)
    batches = calibration_batches(data, tokenizer, 2, min(129, cfg.max_position_embeddings), 8,
                                  max_seq_len=cfg.max_position_embeddings)
    return search_spec(cfg, params, Budget(budget), batches, max_candidates=32)


def read_plan(cfg: ModelConfig, spec: ElasticSpec, shapes: dict[str, tuple[int, ...]]
              ) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """{nested parameter: (parent parameter, per-axis indices)}: what `slice_params` takes from the parent.

    Found by running `slice_params` itself on index probes (one per axis: every entry holds its own index along
    that axis, offset so that each parent array's indices are distinct), so the plan follows the one slicing rule.
    Contiguous index runs starting at 0 become slices (tensorstore reads them as ranges).
    """
    names = sorted(shapes)
    rank = max((len(s) for s in shapes.values()), default=0)
    offsets, total = {}, 0
    for name in names:
        offsets[name] = total
        total += max(shapes[name], default=1) + 1
    if total >= 2**31:
        raise ElasticError("slice: the parent has too many parameters to plan a partial read")
    starts = np.asarray([offsets[n] for n in names])
    per_axis: dict[str, list[np.ndarray]] = {}
    owner: dict[str, str] = {}
    for axis in range(rank):
        probe = {}
        for name in names:
            shape = shapes[name]
            line = np.arange(shape[axis] if axis < len(shape) else 1, dtype=np.int32) + offsets[name]
            line = line.reshape([-1 if a == axis else 1 for a in range(len(shape))]) if axis < len(shape) else line[0]
            probe[name] = np.broadcast_to(line, shape)
        sliced, _ = slice_params(unflatten(probe), cfg, spec)
        for path, leaf in jax.tree_util.tree_leaves_with_path(sliced):
            leaf, out = np.asarray(leaf), path_str(path)
            if axis >= leaf.ndim:
                continue
            line = leaf[tuple(slice(None) if a == axis else 0 for a in range(leaf.ndim))]
            source = names[int(np.searchsorted(starts, line.min() if line.size else 0, side="right")) - 1]
            owner.setdefault(out, source)
            per_axis.setdefault(out, []).append(line - offsets[source])
    plan = {}
    for out, lines in per_axis.items():
        plan[out] = (owner[out], tuple(_as_index(line) for line in lines))
    return plan


def _as_index(line: np.ndarray) -> Any:
    if line.size and np.array_equal(line, np.arange(line.size)):
        return slice(0, int(line.size))
    return line.astype(np.int64)


def read_sub_model(path: str | Path, cfg: ModelConfig, spec: ElasticSpec, prefix: str = "") -> dict:
    """The nested model of `spec` read from a checkpoint's params (under `prefix`, e.g. "model/" in an elastic
    checkpoint), touching about the sub-model's bytes only."""
    shapes = {name[len(prefix):]: shape for name, (shape, _) in stored_shapes(path).items() if name.startswith(prefix)}
    plan = read_plan(cfg, spec, shapes)
    parts = restore_slice(path, {prefix + source: index for source, index in plan.values()})
    flat = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(parts)}
    return unflatten({out: flat[prefix + source] for out, (source, _) in plan.items()})


def slice_checkpoint(path: str | Path, budget: float, out: str | Path, fmt: str = "elastic_jax", *,
                     overwrite: bool = False) -> tuple[ElasticSpec, ModelConfig]:
    """Write the nested model of `budget` to `out` (format "elastic_jax" or "hf").

    From an elastic checkpoint only the sub-model's bytes (and the small router, for a budget between trained
    ones) are read; a ranked parent without a router is read whole, since the zero-shot search runs it.
    """
    from elastic_jax.convert.hf import to_hf
    from elastic_jax.model_io import check_output, model_config_of, read_metadata, save_model

    check_output(out, overwrite)
    meta = read_metadata(path)
    cfg = model_config_of(path, meta)
    stored = stored_shapes(path)
    elastic = "router" in (meta.get("elastic") or {}) and any(n.startswith("router/") for n in stored)
    if elastic:
        trained = any(abs(float(key) - budget) < 1e-9 for key in meta["elastic"].get("specs") or {})
        router = {} if trained else restore_slice(path, {n: ... for n in stored if n.startswith("router/")})
        spec = budget_spec(cfg, router, meta, budget)
        _progress(f"reading the sub-model of budget {budget:g} from {path} ...")
        sub_params, sub_cfg = read_sub_model(path, cfg, spec, "model/"), spec.apply_to(cfg)
    else:
        if not 0.0 < budget <= 1.0 or (meta.get("elastic") or {}).get("ranking") is None:
            budget_spec(cfg, {}, meta, budget)  # a bad budget or an unranked parent: one error before any read
        _progress(f"reading the parent {path} ...")
        params = load_params(path)
        params = params.get("model", params) if "router" in params else params
        _progress(f"searching an architecture for budget {budget:g} (zero-shot) and slicing ...")
        spec = budget_spec(cfg, params, meta, budget)
        sub_params, sub_cfg = slice_params(params, cfg, spec)
    _progress(f"writing {out} ({fmt}) ...")
    if fmt == "hf":
        to_hf(sub_cfg, sub_params, out, overwrite=overwrite)
    else:
        extra = {k: v for k, v in meta.items() if k in ("tokenizer",)}
        save_model(out, sub_cfg, sub_params, {**extra, "sliced_from": {"budget": budget, "spec": spec.to_dict()}},
                   overwrite=overwrite)
    return spec, sub_cfg


def slice_summary(path: str | Path, budget: float, spec: ElasticSpec, sub_cfg: ModelConfig) -> str:
    """What `slice` prints: the target beside the fraction achieved (in the checkpoint's budget metric), total and
    active parameters, and the architecture."""
    from elastic_jax.model_io import model_config_of, read_metadata

    meta = read_metadata(path)
    cfg = model_config_of(path, meta)
    elastic = meta.get("elastic") or {}  # the router's metric (older checkpoints: the flat train section's)
    metric = (elastic.get("router") or {}).get("metric") or (elastic.get("train") or {}).get("metric") or "total_params"
    achieved = Budget(1.0, metric).measure(sub_cfg) / Budget(1.0, metric).measure(cfg)
    total, active = count_params(sub_cfg)
    parent_total, parent_active = count_params(cfg)
    return (f"budget {budget:g}: target {budget:.1%} of the parent's {metric}, achieved {achieved:.1%}\n"
            f"total {format_count(total)} ({total / parent_total:.1%}) active {format_count(active)} "
            f"({active / parent_active:.1%})\nspec {spec.to_dict()}")

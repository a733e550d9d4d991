"""Cut one budget out of an elastic checkpoint: the trained architecture of a trained budget, or the router's
argmax for a budget between two trained ones (the `slice` verb writes it: elastic_jax/deploy.py).

Only the sub-model's bytes are read: `read_plan` finds, for every parameter of the nested model, which indices of
which parent array `slice_params` takes, and `restore_slice` reads just those chunks from storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.checkpoint import restore_slice, stored_shapes
from elastic_jax.config import ModelConfig
from elastic_jax.data.calibration import calibration_batches, calibration_source
from elastic_jax.distributed import path_str
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.search import search_spec
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import Budget, ElasticError, ElasticSpec
from elastic_jax.paths import unflatten


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

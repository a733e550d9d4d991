"""Importance of every elastic axis from forward passes on calibration batches (METHOD §4), and rankings.

One jitted function per config computes a batch's statistics; Python sums them over the batch stream. The
activations come from the unmodified model through a Flax method interceptor that `sow`s what a mixer reads:
the pre-norm outputs (hidden channels), the inputs of out_proj / o_proj / the FFN down projections, the x part
of the Mamba in-projection (which ones, and how each is scored, the block kinds' records say:
elastic_jax/model/blocks.py); each MoE layer sows the rows it routed itself (routing weight, expert hidden
activations and output; `ROUTED_ROWS` in elastic_jax/model/moe.py) for REAP. Width scores use Minitron's
aggregation (mean |activation| over the sequence, then L2 over the batch); hidden channels sum |rmsnorm(x)_i|
over batch, sequence and every block norm; experts use REAP; depth is the normalised logit MSE when a layer is
removed (through the masked forward, so one compilation serves all).

Mamba heads: as METHOD §4 and the Megatron code, a head's score is the L2 of its channels in the x part of
in_proj ("mamba_heads", the default `mamba_source="in_x"`); `mamba_source="out_proj"` ranks by the same
statistic at the out_proj input, after the scan, the z gate and the group norm ("mamba_heads_out"). Neither
wins on every parent; on the test suite's trained parent the in_x order beats every random head order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.model.blocks import BLOCKS, Activation
from elastic_jax.model.declare import (
    ELASTIC_AXES,
    Dim,
    ElasticAxis,
    ParamDecl,
    by_name,
    elastic_axes_of,
    elastic_axis_of,
    elastic_axis_size,
)
from elastic_jax.model.functional import build, check_tokens
from elastic_jax.model.hybrid import block_declarations
from elastic_jax.model.linear import Linear
from elastic_jax.model.masks import LayerMasks, Masks
from elastic_jax.model.norms import RMSNorm

_KEY = "elastic_importance"
MAMBA_SOURCES = {"in_x": "mamba_heads", "out_proj": "mamba_heads_out"}


# The Linear submodules whose input / output some block kind's importance reads (elastic_jax/model/blocks.py).
_SOWN = {side: frozenset(a.path[-1] for kind in BLOCKS.values() for a in kind.importance if a.side == side)
         for side in ("input", "output")}


def _capture(next_fun, args, kwargs, context):
    """Interceptor: sow the activations importance needs, leaving the computation unchanged."""
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
        return out
    if isinstance(module, RMSNorm) and module.name == "norm":
        module.sow("intermediates", _KEY, out)
    elif isinstance(module, Linear) and module.name in _SOWN["output"]:
        module.sow("intermediates", f"{_KEY}_output", out)
    elif isinstance(module, Linear) and module.name in _SOWN["input"]:
        module.sow("intermediates", f"{_KEY}_input", args[0])
    return out


def _activation_dim(decls: dict[str, ParamDecl], act: Activation) -> tuple[ParamDecl, Dim]:
    """The declaration of the activation's Linear and the dimension of its kernel the activation runs along."""
    decl = decls["/".join(("mixer", *act.path, "kernel"))]
    return decl, decl.dims[0 if act.side == "input" else -1]


def _items(decl: ParamDecl, d: Dim) -> int:
    """How many items of an elastic axis dimension `d` holds (heads, neurons): the product of its elastic axes."""
    return math.prod(decl.size(a) for a in d.axes if any(a in ea.axes for ea in ELASTIC_AXES.values()))


def _layer_stats(cfg: ModelConfig, layer: int, sown: dict, shape: tuple[int, int]) -> dict[str, jax.Array]:
    """One layer's activation statistics, keyed by score name (and REAP's sums for a routing mixer)."""
    kind, decls = BLOCKS[cfg.pattern[layer]], by_name(block_declarations(cfg, layer))
    out = {}
    for act in kind.importance:
        a = functools.reduce(lambda tree, name: tree[name], act.path, sown)[f"{_KEY}_{act.side}"][0]
        if act.token_l2:  # a head's activation is the L2 of its channels at each token
            a = jnp.linalg.norm(a.reshape(*a.shape[:2], _items(*_activation_dim(decls, act)), -1).astype(jnp.float32),
                                axis=-1)
        out[act.score] = _minitron(a)
    if kind.routed_rows:
        out.update(_moe_stats(sown[kind.routed_rows][0], cfg.width("n_routed_experts", layer), *shape))
    return out


def _minitron(a: jax.Array) -> jax.Array:
    """[batch, length, n] -> [n]: sum over the batch of (mean over the sequence of |a|)^2 (sqrt taken at the end)."""
    return jnp.sum(jnp.square(jnp.mean(jnp.abs(a.astype(jnp.float32)), axis=1)), axis=0)


def _moe_stats(rows: dict[str, jax.Array], num_experts: int, batch: int, length: int) -> dict[str, jax.Array]:
    """REAP sums and counts per expert, and expert-FFN channel statistics shared by all experts, from the rows
    the MoE layer itself routed and computed (its `routed_rows` sow, elastic_jax/model/moe.py)."""
    w_rows, expert_of_row = rows["weights"], rows["experts"]
    y, h = rows["outputs"].astype(jnp.float32), rows["hidden"].astype(jnp.float32)
    reap = jax.ops.segment_sum(w_rows * jnp.linalg.norm(y, axis=-1), expert_of_row, num_experts)
    per_seq = jax.ops.segment_sum(jnp.abs(h) * w_rows[:, None], rows["tokens"] // length, batch) / length
    return {"reap_sum": reap, "reap_count": jnp.bincount(expert_of_row, length=num_experts).astype(jnp.float32),
            "expert_ffn": jnp.sum(jnp.square(per_seq), axis=0)}


def _depth_errors(model: nn.Module, params: dict, tokens: jax.Array, reference: jax.Array,
                  base: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[L]: sum of squared logit differences to `reference` when layer j is removed on top of `base` gates."""
    num_layers = base.shape[0]

    def removed(gates: jax.Array) -> jax.Array:
        masks = Masks(layers=tuple(LayerMasks(depth=gates[i]) for i in range(num_layers)))
        logits = model.apply({"params": params}, tokens, masks=masks, segment_ids=segment_ids)[0]
        return jnp.sum(jnp.square(logits - reference))

    return jax.lax.map(removed, base[None, :] * (1.0 - jnp.eye(num_layers)))


@lru_cache(maxsize=16)
def _stats_fn(cfg: ModelConfig):
    """The jitted per-batch statistics of every axis (compiled once per config and batch shape)."""
    model = build(cfg)

    def stats(params: dict, tokens: jax.Array, segment_ids: jax.Array | None) -> dict:
        with nn.intercept_methods(_capture):
            (logits, _), state = model.apply({"params": params}, tokens, segment_ids=segment_ids,
                                             mutable=["intermediates"])
        got = state["intermediates"]
        hidden = jnp.zeros((cfg.hidden_size,), jnp.float32)
        layers = []
        for layer in range(cfg.num_layers):
            g = got[f"layers_{layer}"]
            hidden = hidden + jnp.sum(jnp.abs(g["norm"][_KEY][0]), axis=(0, 1))
            layers.append(_layer_stats(cfg, layer, g.get("mixer", {}), tokens.shape))
        ones = jnp.ones((cfg.num_layers,), jnp.float32)
        depth_sq_err = _depth_errors(model, params, tokens, logits, ones, segment_ids)
        return {"hidden": hidden, "layers": layers, "depth_sq_err": depth_sq_err,
                "logit_sq": jnp.sum(jnp.square(logits))}

    return jax.jit(stats)


@lru_cache(maxsize=16)
def _depth_fn(cfg: ModelConfig):
    """Jitted (params, tokens, base gates) -> (per-layer squared logit error against the full model, sum logits^2)."""
    model = build(cfg)

    def depth(params: dict, tokens: jax.Array, segment_ids: jax.Array | None, base: jax.Array):
        reference = model.apply({"params": params}, tokens, segment_ids=segment_ids)[0]
        return _depth_errors(model, params, tokens, reference, base, segment_ids), jnp.sum(jnp.square(reference))

    return jax.jit(depth)


def token_batch(cfg: ModelConfig, batch: Any) -> jax.Array:
    """A validated int32 [batch, length] array from an array or a {"inputs"/"tokens": array} batch."""
    if isinstance(batch, Mapping):
        batch = batch["inputs"] if "inputs" in batch else batch["tokens"]
    return jnp.asarray(check_tokens(cfg, batch, "calibration batch"))


def segment_batch(batch: Any) -> jax.Array | None:
    """The packed documents' segment ids [batch, length] of a {"inputs", "segment_ids"} batch, else None: a
    document-aware parent must be scored on its documents apart, as it was trained."""
    if isinstance(batch, Mapping) and batch.get("segment_ids") is not None:
        return jnp.asarray(batch["segment_ids"], jnp.int32)
    return None


def _layer_scores(cfg: ModelConfig, layer: int, t: dict) -> dict[str, np.ndarray]:
    """One layer's summed statistics -> its scores: each item's sqrt of the summed squares of its channels."""
    kind, decls = BLOCKS[cfg.pattern[layer]], by_name(block_declarations(cfg, layer))
    out = {}
    for act in kind.importance:
        decl, d = _activation_dim(decls, act)
        out[act.score] = np.sqrt(t[act.score].reshape(_items(decl, d), -1).sum(-1))
        if act.groups_as:  # the groups are the major logical axis of the item axis (KV groups of query heads)
            groups = decl.size(ELASTIC_AXES[elastic_axis_of(d.axes[0])].axes[0])
            out[act.groups_as] = np.linalg.norm(out[act.score].reshape(groups, -1), axis=-1)
    if kind.routed_rows:  # REAP: the mean over routed tokens of weight x output norm
        out["experts"] = t["reap_sum"] / np.maximum(t["reap_count"], 1.0)
        out["expert_ffn"] = np.sqrt(t["expert_ffn"])
    return out


def _finalize(cfg: ModelConfig, total: dict) -> dict:
    """Summed statistics -> per-axis scores (higher is more important), indexed like the parent's arrays."""
    layers = [_layer_scores(cfg, layer, total["layers"][layer]) for layer in range(cfg.num_layers)]
    depth = total["depth_sq_err"] / max(float(total["logit_sq"]), 1e-30)
    return {"hidden": total["hidden"], "layers": layers, "depth": depth}


def _on_host(a: jax.Array) -> np.ndarray:
    """A statistic's whole value in this process, also when the parent is sharded over several processes."""
    if a.is_fully_addressable or a.is_fully_replicated:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def compute_scores(cfg: ModelConfig, params: dict, batches: Iterable[Any]) -> dict:
    """Per-axis importance scores summed over a stream of [batch, length] token arrays (or {"inputs": ...,
    "segment_ids": ...} batches)."""
    fn = _stats_fn(cfg)
    total = None
    for batch in batches:
        stats = fn(params, token_batch(cfg, batch), segment_batch(batch))
        stats = jax.tree_util.tree_map(lambda a: np.asarray(_on_host(a), np.float64), stats)
        total = stats if total is None else jax.tree_util.tree_map(np.add, total, stats)
    if total is None:
        raise ElasticError("importance needs at least one calibration batch; got none")
    return _finalize(cfg, total)


def _desc(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(scores), kind="stable")


def _within_groups(scores: np.ndarray, groups: int) -> np.ndarray:
    per = len(scores) // groups
    return np.concatenate([g * per + _desc(scores[g * per:(g + 1) * per]) for g in range(groups)])


def rank_from_scores(cfg: ModelConfig, scores: dict, *, mamba_source: str = "in_x") -> dict:
    """A ranking (see elastic_jax.elastic.permute) that sorts every axis by decreasing score within its groups.

    `mamba_source`: "in_x" (METHOD: the x part of in_proj) or "out_proj" (the out_proj input) for Mamba heads.
    """
    if mamba_source not in MAMBA_SOURCES:
        raise ElasticError(f"mamba_source {mamba_source!r} is unknown; allowed: {list(MAMBA_SOURCES)}")
    layers = []
    for layer in range(cfg.num_layers):
        s, decls = scores["layers"][layer], block_declarations(cfg, layer)
        layers.append({name: _order(s[MAMBA_SOURCES[mamba_source]] if name == "mamba_heads" else s[name],
                                    ELASTIC_AXES[name], elastic_axis_size(decls, name))
                       for name in elastic_axes_of(decls)})
    return {"hidden": _desc(scores["hidden"]), "layers": layers, "depth": _desc(scores["depth"])}


def random_ranking(cfg: ModelConfig, seed: int) -> dict:
    """A seeded random order of every axis with the structure an importance ranking keeps (heads within their
    groups, KV groups whole): the ranking of independent uniform scores, the ablation of importance order."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in range(cfg.num_layers):
        decls = block_declarations(cfg, layer)
        layers.append({name: rng.random(math.prod(elastic_axis_size(decls, name))) for name in elastic_axes_of(decls)})
    return rank_from_scores(cfg, {"hidden": rng.random(cfg.hidden_size), "layers": layers,
                                  "depth": rng.random(cfg.num_layers)})


def _order(scores: np.ndarray, ea: ElasticAxis, sizes: tuple[int, ...]) -> np.ndarray:
    """Decreasing score along an elastic axis, within the structure its declaration allows: within groups
    ("fixed"), or groups by the L2 of their items' scores, then items within each group ("whole")."""
    if len(sizes) == 1:
        return _desc(scores)
    if ea.groups == "fixed":
        return _within_groups(scores, sizes[0])
    per = len(scores) // sizes[0]
    grouped = np.asarray(scores).reshape(sizes[0], per)
    return np.concatenate([g * per + _desc(grouped[g]) for g in _desc(np.linalg.norm(grouped, axis=-1))])


def iterative_depth_order(cfg: ModelConfig, params: dict, batches: list[Any]) -> np.ndarray:
    """Layers most important first, removing the least important layer one at a time and re-scoring the rest
    with the removed ones gone (errors always against the full model's logits)."""
    fn, tokens = _depth_fn(cfg), [(token_batch(cfg, b), segment_batch(b)) for b in batches]
    base, removed = np.ones(cfg.num_layers, np.float32), []
    while len(removed) < cfg.num_layers - 1:
        err = sum(np.asarray(fn(params, t, seg, jnp.asarray(base))[0], np.float64) for t, seg in tokens)
        err[removed] = np.inf
        worst = int(np.argmin(err))
        removed.append(worst)
        base[worst] = 0.0
    rest = [i for i in range(cfg.num_layers) if i not in removed]
    return np.asarray(rest + removed[::-1])


def run_importance(cfg: ModelConfig, params: dict, batches: Iterable[Any], *, iterative_depth: bool = False,
                   mamba_source: str = "in_x") -> tuple[dict, dict]:
    """(scores, ranking) for every axis; `permute_params(params, cfg, ranking)` makes nested models prefixes.

    `batches`: [batch, length] token arrays (or {"inputs": ..., "segment_ids": ...}); `iterative_depth` re-scores
    layers after each removal (L^2/2 forwards per batch instead of L).
    """
    batches = list(batches)
    scores = compute_scores(cfg, params, batches)
    ranking = rank_from_scores(cfg, scores, mamba_source=mamba_source)
    if iterative_depth:
        ranking["depth"] = iterative_depth_order(cfg, params, batches)
    return scores, ranking

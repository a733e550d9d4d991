"""ElasticSpec (which prefix of every elastic axis a nested model keeps) and Budget (a resource target).

A spec is a hashable, static value: jitted programs are cached per spec. Width fields carry the names of the
ModelConfig fields they shrink and hold a kept count, one int for all layers or a per-layer tuple indexed by
the *parent's* layers (entries of layers of another kind are ignored, as in ModelConfig); None keeps the
parent's width. `layers` lists the parent layers kept (depth); a dropped layer is an identity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from elastic_jax.config import ConfigError, ModelConfig
from elastic_jax.elastic.accounting import WEIGHT_DTYPES, count_params, memory_bytes
from elastic_jax.model.blocks import BLOCKS, kind_of_axis
from elastic_jax.model.declare import ELASTIC_AXES

IntOrTuple = int | tuple[int, ...]
ATTENTION_MODES = ("kv_groups", "query_heads")

# Elastic width fields of a spec: field -> (axis name, letter of the block kind whose layers it applies to).
WIDTH_FIELDS = {ea.field: (name, kind_of_axis(name)) for name, ea in ELASTIC_AXES.items() if name != "hidden"}
AXIS_FIELDS = {"hidden": "hidden_size", **{axis: name for name, (axis, _) in WIDTH_FIELDS.items()}, "depth": "layers"}
AXES = tuple(AXIS_FIELDS)


class ElasticError(ValueError):
    """An elastic spec, budget or ranking is invalid; the message names the field, the layer and what is allowed."""


def _fail(field: str, message: str, layer: int | None = None) -> None:
    where = f"layer {layer}: " if layer is not None else ""
    raise ElasticError(f"spec.{field}: {where}{message}")


def check_axis(axis: str) -> str:
    """The axis name itself, or ElasticError listing the known axes."""
    if axis not in AXIS_FIELDS:
        raise ElasticError(f"unknown elastic axis {axis!r}; allowed: {list(AXES)}")
    return axis


@dataclasses.dataclass(frozen=True)
class ElasticSpec:
    """Per-axis kept sizes of one nested model (None: as the parent).

    `num_attention_heads` counts query heads; with attention_mode "kv_groups" whole KV groups are kept (a multiple
    of the parent's query heads per group), with "query_heads" every KV group keeps the same prefix of its query
    heads (a multiple of the KV head count). Mamba heads and experts are kept as an equal prefix of every B/C
    group / routing group.
    """

    hidden_size: int | None = None
    mamba_num_heads: IntOrTuple | None = None
    num_attention_heads: IntOrTuple | None = None
    intermediate_size: IntOrTuple | None = None
    n_routed_experts: IntOrTuple | None = None
    moe_intermediate_size: IntOrTuple | None = None
    moe_shared_expert_intermediate_size: IntOrTuple | None = None
    layers: tuple[int, ...] | None = None
    attention_mode: str = "kv_groups"

    def __post_init__(self):
        for name in ("hidden_size", *WIDTH_FIELDS, "layers"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    _fail(name, f"must hold integers, got {list(value)}")
                object.__setattr__(self, name, tuple(int(v) for v in value))
            elif value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                _fail(name, f"must be an integer{'' if name == 'hidden_size' else ', a per-layer tuple'} or None, "
                      f"got {value!r}")
        if isinstance(self.hidden_size, tuple):
            _fail("hidden_size", "is one value for the whole model (channels are shared by every layer)")
        if isinstance(self.layers, int):
            _fail("layers", "must be a tuple of kept layer indices")
        if self.attention_mode not in ATTENTION_MODES:
            _fail("attention_mode", f"must be one of {list(ATTENTION_MODES)}, got {self.attention_mode!r}")

    # ---- per-layer values ----------------------------------------------------------------------
    def width(self, cfg: ModelConfig, name: str, layer: int) -> int:
        """The kept width of field `name` at parent layer `layer` (the parent's width where the spec says None)."""
        value = getattr(self, name)
        if value is None:
            return cfg.hidden_size if name == "hidden_size" else cfg.width(name, layer)
        return value[layer] if isinstance(value, tuple) else value

    def hidden(self, cfg: ModelConfig) -> int:
        return cfg.hidden_size if self.hidden_size is None else self.hidden_size

    def kept_layers(self, cfg: ModelConfig) -> tuple[int, ...]:
        return tuple(range(cfg.num_layers)) if self.layers is None else self.layers

    def nested_width(self, cfg: ModelConfig, name: str, layer: int) -> int:
        """The nested model's per-layer config field `name` at parent layer `layer`: the spec's width, or the KV
        heads its attention mode keeps, or the parent's."""
        if name == "num_key_value_heads":
            return self.kv_heads(cfg, layer)
        return self.width(cfg, name, layer) if name in WIDTH_FIELDS else cfg.width(name, layer)

    def kv_heads(self, cfg: ModelConfig, layer: int) -> int:
        """KV heads the nested model keeps at an attention layer (set by the attention mode)."""
        heads, kv = self.width(cfg, "num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
        if self.attention_mode == "query_heads":
            return kv
        return heads // (cfg.width("num_attention_heads", layer) // kv)

    # ---- validation and the nested config ------------------------------------------------------
    def validate(self, cfg: ModelConfig) -> ElasticSpec:
        """Raise ElasticError unless the spec nests inside `cfg`; returns self."""
        d = self.hidden(cfg)
        if not 1 <= d <= cfg.hidden_size:
            _fail("hidden_size", f"{d} is outside the allowed range 1..{cfg.hidden_size}")
        for name in WIDTH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != cfg.num_layers:
                _fail(name, f"a per-layer tuple needs one entry per parent layer ({cfg.num_layers}), got {len(value)}")
        _validate_layers(self, cfg)
        for layer in self.kept_layers(cfg):
            _validate_layer(self, cfg, layer)
        return self

    def apply_to(self, cfg: ModelConfig) -> ModelConfig:
        """The nested model's config: the same modules built smaller (per-layer widths only where they differ)."""
        self.validate(cfg)
        kept = self.kept_layers(cfg)
        pattern = "".join(cfg.pattern[i] for i in kept)
        changes: dict[str, Any] = {"hidden_size": self.hidden(cfg), "pattern": pattern}
        for letter, kind in BLOCKS.items():
            for name in kind.fields:
                values = [self.nested_width(cfg, name, i) if cfg.pattern[i] == letter else cfg.width(name, i)
                          for i in kept]
                used = {v for v, c in zip(values, pattern) if c == letter}
                changes[name] = used.pop() if len(used) == 1 else (tuple(values) if used else max(values))
        try:
            return cfg.replace(**changes)
        except ConfigError as err:  # should be unreachable after validate(); keep the message informative
            raise ElasticError(f"spec does not give a valid nested config: {err}") from err

    def is_full(self, cfg: ModelConfig) -> bool:
        """True when the spec keeps the whole parent."""
        self.validate(cfg)
        same = all(self.width(cfg, name, i) == cfg.width(name, i)
                   for name, (_, char) in WIDTH_FIELDS.items() for i, c in enumerate(cfg.pattern) if c == char)
        return same and self.hidden(cfg) == cfg.hidden_size and len(self.kept_layers(cfg)) == cfg.num_layers

    # ---- construction and storage --------------------------------------------------------------
    @classmethod
    def from_fractions(cls, cfg: ModelConfig, fractions: Mapping[str, float], *, attention_mode: str = "kv_groups",
                       layer_order: Sequence[int] | None = None) -> ElasticSpec:
        """A spec keeping about `fractions[axis]` of each named axis (others whole), rounded to a valid size.

        `layer_order` (most important first) chooses the kept layers for a depth fraction below 1.
        """
        values: dict[str, Any] = {"attention_mode": attention_mode}
        for axis, fraction in fractions.items():
            check_axis(axis)
            if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
                raise ElasticError(f"fraction for axis {axis!r} must be in (0, 1], got {fraction!r}")
            if axis == "hidden":
                values["hidden_size"] = max(1, round(fraction * cfg.hidden_size))
            elif axis == "depth":
                values["layers"] = _kept_by_order(cfg, fraction, layer_order)
            else:
                name = AXIS_FIELDS[axis]
                per = [round_width(cfg, name, i, fraction, attention_mode) for i in range(cfg.num_layers)]
                char = WIDTH_FIELDS[name][1]
                used = {v for v, c in zip(per, cfg.pattern) if c == char}
                values[name] = used.pop() if len(used) == 1 else tuple(per)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); from_dict inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ElasticSpec:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ElasticError(f"unknown elastic spec field(s) {unknown}; allowed: {known}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _validate_layers(spec: ElasticSpec, cfg: ModelConfig) -> None:
    if spec.layers is None:
        return
    if not spec.layers:
        _fail("layers", "must keep at least one layer")
    bad = [i for i in spec.layers if not 0 <= i < cfg.num_layers]
    if bad:
        _fail("layers", f"indices {bad} are outside the allowed range 0..{cfg.num_layers - 1}")
    if list(spec.layers) != sorted(set(spec.layers)):
        _fail("layers", f"must be strictly increasing parent layer indices, got {list(spec.layers)}")


def _check_range(field: str, layer: int, value: int, low: int, high: int, step: int = 1, why: str = "") -> None:
    if not low <= value <= high or (value - low) % step:
        allowed = f"{low}..{high}" if step == 1 else f"multiples of {step} in {low}..{high}"
        _fail(field, f"{value} is not allowed; allowed: {allowed}{why}", layer)


def _validate_layer(spec: ElasticSpec, cfg: ModelConfig, layer: int) -> None:
    for name in BLOCKS[cfg.pattern[layer]].elastic_fields:
        low, step, why = width_rule(cfg, name, layer, spec.attention_mode)
        _check_range(name, layer, spec.width(cfg, name, layer), low, cfg.width(name, layer), step, why)


def width_rule(cfg: ModelConfig, name: str, layer: int, attention_mode: str = "kv_groups") -> tuple[int, int, str]:
    """(smallest, step, why) of the kept sizes of width field `name` at `layer`: grouped axes keep an equal
    prefix of every group (or whole groups), experts keep enough candidates for top-k routing."""
    if name == "mamba_num_heads":
        g = cfg.mamba_n_groups
        return g, g, f" (heads are kept as an equal prefix of each of the {g} B/C groups)"
    if name == "num_attention_heads":
        q, kv = cfg.width("num_attention_heads", layer), cfg.width("num_key_value_heads", layer)
        if attention_mode == "kv_groups":
            return q // kv, q // kv, f" (attention_mode 'kv_groups' keeps whole KV groups of {q // kv} query heads)"
        return kv, kv, f" (attention_mode 'query_heads' keeps the same query heads in each of {kv} KV groups)"
    if name == "n_routed_experts":
        return (min_experts(cfg), cfg.n_group,
                f" (top-{cfg.num_experts_per_tok} routing over {cfg.n_group} routing group(s) kept equally)")
    return 1, 1, ""


def min_experts(cfg: ModelConfig) -> int:
    """The fewest experts an MoE layer may keep: top-k candidates, >= 2 per group with group-limited routing."""
    per_group = max(math.ceil(cfg.num_experts_per_tok / cfg.topk_group), 2 if cfg.n_group > 1 else 1)
    return per_group * cfg.n_group


def round_width(cfg: ModelConfig, name: str, layer: int, fraction: float, attention_mode: str = "kv_groups") -> int:
    """About `fraction` of field `name` at `layer`, rounded to the nearest size the grouping allows."""
    full = cfg.width(name, layer)
    low, step, _ = width_rule(cfg, name, layer, attention_mode)
    return int(min(full, max(min(low, full), round(fraction * full / step) * step)))


def _kept_by_order(cfg: ModelConfig, fraction: float, layer_order: Sequence[int] | None) -> tuple[int, ...] | None:
    keep = max(1, round(fraction * cfg.num_layers))
    if keep == cfg.num_layers:
        return None
    if layer_order is None:
        raise ElasticError("a depth fraction below 1 needs layer_order (layers ranked most important first, e.g. "
                           "ranking['depth'] from run_importance)")
    if sorted(layer_order) != list(range(cfg.num_layers)):
        raise ElasticError(f"layer_order must be a permutation of 0..{cfg.num_layers - 1}, got {list(layer_order)}")
    return tuple(sorted(int(i) for i in layer_order[:keep]))


BUDGET_METRICS = ("total_params", "active_params", "memory")


@dataclasses.dataclass(frozen=True)
class Budget:
    """A target as a fraction of the parent: total parameters, active parameters per token, or memory bytes
    (weights at `weight_dtype` plus the KV cache and SSM state for `batch` sequences of `context` tokens)."""

    fraction: float
    metric: str = "total_params"
    batch: int = 1
    context: int = 4096
    weight_dtype: str = "bfloat16"

    def __post_init__(self):
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f <= 1):
            raise ElasticError(f"budget.fraction must be in (0, 1] (a fraction of the parent), got {f!r}")
        if self.metric not in BUDGET_METRICS:
            raise ElasticError(f"budget.metric: unknown {self.metric!r}; allowed: {list(BUDGET_METRICS)}")
        for name in ("batch", "context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ElasticError(f"budget.{name} must be a positive integer, got {value!r}")
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise ElasticError(f"budget.weight_dtype: unknown {self.weight_dtype!r}; allowed: {list(WEIGHT_DTYPES)}")

    def measure(self, cfg: ModelConfig) -> int:
        """The budget's metric for a (nested) config."""
        if self.metric == "memory":
            return memory_bytes(cfg, self.batch, self.context, self.weight_dtype)
        total, active = count_params(cfg)
        return total if self.metric == "total_params" else active

    def target(self, cfg: ModelConfig) -> float:
        """The absolute target for parent `cfg`."""
        return self.fraction * self.measure(cfg)

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> Budget:
        """'0.6' (total parameters) or 'metric:0.6' / 'metric=0.6' with metric one of BUDGET_METRICS."""
        metric, _, value = text.replace("=", ":").rpartition(":")
        try:
            fraction = float(value)
        except ValueError:
            raise ElasticError(f"budget {text!r}: expected '<fraction>' or '<metric>:<fraction>' with a number in "
                               f"(0, 1] and metric one of {list(BUDGET_METRICS)}") from None
        return cls(fraction, metric or "total_params", **kwargs)

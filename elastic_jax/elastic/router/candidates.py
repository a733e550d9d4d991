"""The candidate grid: which axes are routed, and the descending candidate widths of each (aligned or whole
groups), with the prefix mask of every candidate."""

from __future__ import annotations

import dataclasses

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.router.config import MAX_WIDTH_MULTIPLE, RouterConfig
from elastic_jax.elastic.slicing import spec_masks
from elastic_jax.elastic.spec import WIDTH_FIELDS, ElasticError, ElasticSpec, round_width

FIELD_OF_AXIS = {"hidden": "hidden_size", **{axis: field for field, (axis, _) in WIDTH_FIELDS.items()}}
GROUPED_AXES = ("mamba_heads", "attention_heads", "experts")  # sized in whole heads / groups, not aligned
KIND_OF_AXIS = {axis: kind for _, (axis, kind) in WIDTH_FIELDS.items()}


@dataclasses.dataclass(frozen=True)
class Axis:
    """One routed axis: its candidate widths (descending, first = the parent's), the layers it covers, and the
    prefix mask of every candidate ([num_choices, size], from spec_masks so masks equal slices)."""

    name: str
    layers: tuple[int, ...]
    choices: tuple[int, ...]
    heterogeneous: bool

    @property
    def rows(self) -> int:
        return len(self.layers) if self.heterogeneous else 1


def width_multiple(full: int, rc: RouterConfig) -> int:
    """Granularity of a neuron/channel axis's candidates: `rc.width_multiple`, or by default the coarsest power of
    two (up to MAX_WIDTH_MULTIPLE) whose steps still separate all num_choices fractions of `full`. Aligned widths
    keep a sliced model's matrix products on whole vector registers and tiles: the static-slice joint step of
    `small` is about 4% faster than with exact fractions such as 457 or 183."""
    if rc.width_multiple is not None:
        return rc.width_multiple
    spacing = (1.0 - rc.min_fraction) * full / (rc.num_choices - 1)
    multiple = MAX_WIDTH_MULTIPLE
    while multiple > 1 and multiple > spacing:
        multiple //= 2
    return multiple


def aligned_widths(full: int, rc: RouterConfig) -> tuple[int, ...]:
    """Descending distinct candidates of a neuron/channel axis: the parent's width, then each fraction of
    np.linspace(1, min_fraction, num_choices) rounded to the nearest multiple of width_multiple(full, rc)."""
    multiple = width_multiple(full, rc)
    widths = {full}
    for f in np.linspace(1.0, rc.min_fraction, rc.num_choices)[1:]:
        widths.add(int(min(full, max(multiple, np.floor(f * full / multiple + 0.5) * multiple))))  # ties up
    return tuple(sorted(widths, reverse=True))


def build_axes(cfg: ModelConfig, rc: RouterConfig) -> tuple[Axis, ...]:
    """The axes of `rc.axes` that the parent has, each with its grid of valid candidate widths (heads and experts
    in whole groups, neurons and channels aligned: `aligned_widths`)."""
    fractions = np.linspace(1.0, rc.min_fraction, rc.num_choices)
    axes = []
    for name in rc.axes:
        if name == "hidden":
            axes.append(Axis(name, (), aligned_widths(cfg.hidden_size, rc), False))
            continue
        layers = tuple(i for i, c in enumerate(cfg.pattern) if c == KIND_OF_AXIS[name])
        if not layers:
            continue
        field = FIELD_OF_AXIS[name]
        if len({cfg.width(field, i) for i in layers}) > 1:
            raise ElasticError(f"router: the parent's {field} differs between layers; routing needs one parent width")
        if name in GROUPED_AXES:
            choices = tuple(sorted({round_width(cfg, field, layers[0], f, rc.attention_mode) for f in fractions},
                                   reverse=True))
        else:
            choices = aligned_widths(cfg.width(field, layers[0]), rc)
        if len(choices) > 1:
            axes.append(Axis(name, layers, choices, rc.heterogeneous))
    return tuple(axes)


def choice_masks(cfg: ModelConfig, axis: Axis, attention_mode: str) -> np.ndarray:
    """[num_choices, size] prefix masks of an axis's candidates (taken from spec_masks of one-axis specs)."""
    rows = []
    for width in axis.choices:
        masks = spec_masks(cfg, ElasticSpec(**{FIELD_OF_AXIS[axis.name]: width}, attention_mode=attention_mode))
        rows.append(masks.hidden if axis.name == "hidden" else masks.layer(axis.layers[0]).get(axis.name))
    return np.stack(rows)


# Width multiples deployment runtimes need (in values): transformers' grouped expert matmul (torch._grouped_mm)
# wants strides of whole 16 bytes (8 bf16/f16 values, 4 float32); NVFP4/FP8 input-axis prefixes keep whole
# 16-value blocks.
DEPLOY_MULTIPLE = {"float32": 4, "bfloat16": 8, "float16": 8, "fp8": 16, "nvfp4": 16}
ALIGNED_FIELDS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "moe_shared_expert_intermediate_size")


def deployment_spec(cfg: ModelConfig, spec: ElasticSpec, multiple: int) -> ElasticSpec:
    """`spec` with its neuron/channel widths (hidden, FFN, expert and shared-expert widths) rounded to the nearest
    multiple of `multiple` (ties up, at most the parent's): still a prefix of the ranked parent, so a nested model
    the exported runtime runs on its default path. Heads and experts are whole groups and stay as they are."""
    def snap(full: int, width: int) -> int:
        return int(min(full, max(multiple, np.floor(width / multiple + 0.5) * multiple)))

    changes = {}
    for name in ALIGNED_FIELDS:
        value = getattr(spec, name)
        if value is None:
            continue
        if name == "hidden_size":
            changes[name] = snap(cfg.hidden_size, value)
        elif isinstance(value, tuple):
            changes[name] = tuple(snap(cfg.width(name, i), v) for i, v in enumerate(value))
        else:
            full = max(cfg.width(name, i) for i in range(cfg.num_layers))
            changes[name] = snap(full, value)
    return dataclasses.replace(spec, **changes).validate(cfg)

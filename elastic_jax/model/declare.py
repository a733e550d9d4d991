"""One declaration per weight: what every parameter's axes mean, declared once next to the module that makes it.

A `ParamDecl` names each stored dimension of a parameter as structure, not as a flat width: a `Dim` is a
concatenation of segments, each a product of named logical axes (major first), e.g. Mamba's `in_x` output is
mamba_groups x mamba_group_heads x mamba_head_dim and its convolution channels are
[x heads | B groups x state | C groups x state]. The declaration also holds the sizes of its axes, the logical
name its sharding rule uses, its Hugging Face name and layout, and its quantisation input axis. Every module
builds its parameters from its declarations (`linear`, `declared_param`), and slicing, masks, permutation,
sharding, importance and conversion all read these records: a new weight is one declaration, and a parameter
without one makes each of them raise `UndeclaredParamError`.

`ELASTIC_AXES` says which logical axes each elastic axis (a ranking / mask key) reorders and cuts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.linear import Linear
from elastic_jax.paths import unflatten

Segment = tuple[str, ...]  # a product of logical axes, major first


class UndeclaredParamError(KeyError):
    """A parameter has no declaration (or its shape differs from it); the message names the parameter."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Dim:
    """One stored dimension: `segments` concatenated, each a product of logical axes; `shard` is the logical
    name the sharding rules use for the whole dimension (None: never split)."""

    shard: str | None
    segments: tuple[Segment, ...]

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(a for seg in self.segments for a in seg)


def dim(shard: str | None, *axes: str) -> Dim:
    """A dimension that is one product of logical axes (`dim("mamba_inner", "mamba_groups", ...)`)."""
    return Dim(shard, (tuple(axes),))


def axis(name: str) -> Dim:
    """A dimension that is a single logical axis, sharded under its own name."""
    return Dim(name, ((name,),))


def concat(shard: str | None, *segments: Segment) -> Dim:
    """A dimension made of several segments side by side (e.g. the convolution's [x | B | C] channels)."""
    return Dim(shard, tuple(tuple(s) for s in segments))


# Hugging Face layouts: "linear" (ours [..., in, out], theirs [out, in]), "vector" (as is), "conv1d" (ours
# [width, channels], theirs [channels, 1, width]), "experts" (ours [E, in, out]; transformers' stacked [E, out, in]
# under `name`, NVIDIA's one [out, in] tensor per expert as `experts.<j>.<rest>.weight`).
HF_LAYOUTS = ("linear", "vector", "conv1d", "experts")


@dataclasses.dataclass(frozen=True)
class HF:
    """A parameter's Hugging Face tensor: `name` under the layer's prefix (or the model root when `root`).
    Parameters sharing one name are concatenated along their output axis, in declaration order (in_proj)."""

    name: str
    layout: str = "linear"
    root: bool = False

    def __post_init__(self):
        if self.layout not in HF_LAYOUTS:
            raise ValueError(f"HF layout {self.layout!r}; allowed: {list(HF_LAYOUTS)}")


@dataclasses.dataclass(frozen=True)
class ParamDecl:
    """One parameter: its path in the params tree, its dimensions, the sizes of its logical axes, its HF tensor
    and the axis a quantiser contracts over (`quant_in`; None: not quantised)."""

    path: tuple[str, ...]
    dims: tuple[Dim, ...]
    sizes: tuple[tuple[str, int], ...]
    hf: HF
    quant_in: int | None = None

    def size(self, name: str) -> int:
        return dict(self.sizes)[name]

    def segment_shape(self, segment: Segment) -> tuple[int, ...]:
        return tuple(self.size(a) for a in segment)

    def dim_size(self, d: Dim) -> int:
        return sum(math.prod(self.segment_shape(s)) for s in d.segments)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dim_size(d) for d in self.dims)

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def under(self, path: Sequence[str], hf_prefix: str) -> ParamDecl:
        """The same declaration seen from a parent module (path and HF name prefixed)."""
        hf = self.hf if self.hf.root else dataclasses.replace(self.hf, name=f"{hf_prefix}{self.hf.name}")
        return dataclasses.replace(self, path=(*path, *self.path), hf=hf)


def declare(path: str, dims: Sequence[Dim], sizes: Mapping[str, int], hf: HF, quant_in: int | None = None
            ) -> ParamDecl:
    """A ParamDecl for `path` ('in_x/kernel'), keeping only the sizes its axes use."""
    used = {a for d in dims for a in d.axes}
    missing = sorted(used - set(sizes))
    if missing:
        raise ValueError(f"declaration {path}: no size for logical axes {missing}")
    return ParamDecl(tuple(path.split("/")), tuple(dims), tuple((a, int(sizes[a])) for a in sorted(used)), hf,
                     quant_in)


def kernel(name: str, inputs: Dim, outputs: Dim, sizes: Mapping[str, int], hf: str | None = None) -> ParamDecl:
    """The [in, out] kernel of a Linear submodule `name` (HF `<hf or name>.weight`, transposed)."""
    return declare(f"{name}/kernel", (inputs, outputs), sizes, HF(hf or f"{name}.weight"), quant_in=0)


def prefixed(decls: Iterable[ParamDecl], path: str, hf_prefix: str | None = None) -> tuple[ParamDecl, ...]:
    """Declarations of a submodule `path` seen from its parent (HF prefix defaults to `path.`)."""
    hf = f"{path}." if hf_prefix is None else hf_prefix
    return tuple(d.under(tuple(path.split("/")), hf) for d in decls)


def by_name(decls: Iterable[ParamDecl]) -> dict[str, ParamDecl]:
    return {d.name: d for d in decls}


# ---- building parameters from declarations ---------------------------------------------------------------
def linear(decl: ParamDecl, dtype: Any, init: Callable, target: CompileTarget, grad_transpose: str = "input"
           ) -> Linear:
    """The Linear submodule a kernel declaration describes (its name and output width come from the record)."""
    if decl.path[-1] != "kernel" or len(decl.path) != 2:
        raise ValueError(f"{decl.name}: a Linear's declaration is '<module>/kernel'")
    return Linear(decl.shape[-1], dtype, init, grad_transpose, target, name=decl.path[0])


def linears(module: nn.Module, decls: Sequence[ParamDecl], x: jax.Array, dtype: Any, init: Callable
            ) -> tuple[jax.Array, ...]:
    """x through the Linear of each declaration, in the forms of `module.target`; with decode kernels for this
    row, as one call (the row is read once and the products share the threads)."""
    kernels = module.target.row_kernels(x, dtype)
    if kernels is not None and not module.is_initializing():
        params = module.variables["params"]
        return kernels.products(x, [params[d.path[0]]["kernel"] for d in decls])
    return tuple(linear(d, dtype, init, module.target)(x) for d in decls)


def declared_param(module: nn.Module, decl: ParamDecl, init: Callable) -> jax.Array:
    """`module.param` of a direct (float32) parameter, its name and shape from the declaration."""
    if len(decl.path) != 1:
        raise ValueError(f"{decl.name}: a direct parameter's declaration is a single name")
    return module.param(decl.path[0], init, decl.shape, jnp.float32)


# ---- the elastic axes -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ElasticAxis:
    """A ranked / cut axis: the logical axes it covers (major first), its config field, and how a ranking may
    move the major axis when there are two: "fixed" (items move only within their group, e.g. Mamba heads in
    their B/C group) or "whole" (groups move whole, items within them: attention KV groups)."""

    name: str
    axes: tuple[str, ...]
    field: str
    groups: str = "fixed"


ELASTIC_AXES: dict[str, ElasticAxis] = {a.name: a for a in (
    ElasticAxis("hidden", ("embed",), "hidden_size"),
    ElasticAxis("mamba_heads", ("mamba_groups", "mamba_group_heads"), "mamba_num_heads"),
    ElasticAxis("attention_heads", ("kv_heads", "q_per_kv"), "num_attention_heads", groups="whole"),
    ElasticAxis("ffn", ("mlp",), "intermediate_size"),
    ElasticAxis("experts", ("routing_groups", "group_experts"), "n_routed_experts"),
    ElasticAxis("expert_ffn", ("expert_mlp",), "moe_intermediate_size"),
    ElasticAxis("shared_ffn", ("shared_mlp",), "moe_shared_expert_intermediate_size"),
)}


def elastic_axis_of(logical: str) -> str:
    """The elastic axis that covers logical axis `logical` (e.g. "shared_mlp" -> "shared_ffn")."""
    for name, ea in ELASTIC_AXES.items():
        if logical in ea.axes:
            return name
    raise KeyError(f"logical axis {logical!r} belongs to no elastic axis")


def elastic_axes_of(decls: Iterable[ParamDecl]) -> tuple[str, ...]:
    """The elastic axes (other than hidden) that some declaration uses, in ELASTIC_AXES order."""
    used = {a for d in decls for dd in d.dims for a in dd.axes}
    return tuple(name for name, ea in ELASTIC_AXES.items() if name != "hidden" and used & set(ea.axes))


def elastic_axis_size(decls: Iterable[ParamDecl], name: str) -> tuple[int, ...]:
    """The sizes of elastic axis `name`'s logical axes, as the declarations give them."""
    ea = ELASTIC_AXES[name]
    sizes: dict[str, int] = {}
    for d in decls:
        sizes.update({k: v for k, v in d.sizes if k in ea.axes})
    return tuple(sizes[a] for a in ea.axes)


# ---- matching a parameter tree against its declarations --------------------------------------------------
def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def leaves_by_path(params: Any) -> dict[str, Any]:
    """{'layers_0/mixer/in_x/kernel': leaf} of a params tree."""
    return {"/".join(_key(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def check_declared(params: Any, decls: Iterable[ParamDecl], what: str, *, shapes: bool = True
                   ) -> dict[str, Any]:
    """The params' leaves by path, after checking that every leaf is declared (with its declared shape) and
    every declaration has a leaf; `what` names the operation in the error."""
    table = by_name(decls)
    leaves = leaves_by_path(params)
    for name, leaf in leaves.items():
        decl = table.get(name)
        if decl is None:
            raise UndeclaredParamError(f"{what}: parameter {name!r} has no declaration; declare it with the module "
                                       "that creates it (elastic_jax/model/declare.py)")
        if shapes and tuple(leaf.shape) != decl.shape:
            raise UndeclaredParamError(f"{what}: parameter {name!r} has shape {tuple(leaf.shape)}, its declaration "
                                       f"says {decl.shape}")
    missing = sorted(set(table) - set(leaves))
    if missing:
        raise UndeclaredParamError(f"{what}: declared parameter(s) {missing[:5]} are missing from the tree")
    return leaves


__all__ = ["Dim", "ELASTIC_AXES", "ElasticAxis", "HF", "HF_LAYOUTS", "ParamDecl", "UndeclaredParamError", "axis",
           "by_name", "check_declared", "concat", "declare", "declared_param", "dim", "elastic_axes_of",
           "elastic_axis_of", "elastic_axis_size", "kernel", "leaves_by_path", "linear", "prefixed", "unflatten"]

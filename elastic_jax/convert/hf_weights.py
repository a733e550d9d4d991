"""Tensor-by-tensor mapping between our parameter pytree and NemotronH checkpoint names, from the declarations.

Every parameter's Hugging Face name and layout is part of its declaration (elastic_jax/model/declare.py): linear
kernels are [in, out] here and [out, in] there; Mamba's in_proj parts share one name and are concatenated along
their output axis in declaration order; the convolution is [width, channels] here and [channels, 1, width]
there. Experts have two layouts: NVIDIA's (`backbone.*`, one tensor per expert) and transformers' in-memory
one (`model.*`, experts stacked [E, out, in]). An undeclared parameter raises UndeclaredParamError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.model.declare import ParamDecl, check_declared, unflatten
from elastic_jax.model.hybrid import model_declarations

T = lambda a: np.ascontiguousarray(np.asarray(a).T)  # noqa: E731


def _full_name(decl: ParamDecl, prefix: str) -> str:
    return decl.hf.name if decl.hf.root else f"{prefix}.{decl.hf.name}"


def hf_groups(cfg: ModelConfig, prefix: str) -> dict[str, list[ParamDecl]]:
    """{HF tensor name: the declarations stored in it (several when fused)}, in checkpoint order."""
    groups: dict[str, list[ParamDecl]] = {}
    for decl in model_declarations(cfg):
        groups.setdefault(_full_name(decl, prefix), []).append(decl)
    for name, members in groups.items():
        if len(members) > 1 and any(d.hf.layout != "linear" for d in members):
            raise ValueError(f"{name}: only linear kernels may share a Hugging Face tensor")
    return groups


def _per_expert(name: str, j: int) -> str:
    """'<p>.experts.up_proj' -> '<p>.experts.<j>.up_proj.weight' (NVIDIA's one tensor per expert)."""
    head, tail = name.rsplit(".experts.", 1)
    return f"{head}.experts.{j}.{tail}.weight"


def to_hf_tensors(cfg: ModelConfig, params: dict, layout: str = "nvidia") -> Iterator[tuple[str, np.ndarray]]:
    """Every checkpoint tensor of `params` (layout "nvidia": backbone.*, per-expert; "transformers": model.*)."""
    prefix, stacked = ("backbone", False) if layout == "nvidia" else ("model", True)
    leaves = check_declared(params, model_declarations(cfg), "to_hf")
    for name, members in hf_groups(cfg, prefix).items():
        arrays = [np.asarray(leaves[d.name]) for d in members]
        kind = members[0].hf.layout
        if kind == "linear":
            yield name, T(np.concatenate(arrays, axis=-1) if len(arrays) > 1 else arrays[0])
        elif kind == "vector":
            yield name, arrays[0]
        elif kind == "conv1d":
            yield name, T(arrays[0])[:, None, :]
        elif stacked:  # experts [E, in, out] -> [E, out, in]
            yield name, np.ascontiguousarray(arrays[0].transpose(0, 2, 1))
        else:
            for j in range(arrays[0].shape[0]):
                yield _per_expert(name, j), T(arrays[0][j])


def _allocate_float32(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, np.float32)


def from_hf_tensors(cfg: ModelConfig, get: Callable[[str], np.ndarray], prefix: str,
                    allocate: Callable[[str, tuple[int, ...]], np.ndarray] = _allocate_float32) -> dict:
    """Our float32 parameter pytree from a tensor getter (`get(name)`, `get.has(name)`) of either layout.

    Each parameter is written into `allocate(name, shape)` (default: a new float32 array; e.g. a file-backed
    memmap for bounded memory) as its tensor is read, one checkpoint tensor at a time (per expert in NVIDIA's
    layout), so no more than one source tensor is held besides the destinations.
    """
    flat: dict[str, np.ndarray] = {}

    def put(decl: ParamDecl, value: np.ndarray) -> None:
        if tuple(value.shape) != tuple(decl.shape):  # kept as read: the caller's shape check names it
            flat[decl.name] = np.asarray(value, np.float32)
            return
        flat[decl.name] = allocate(decl.name, tuple(decl.shape))
        flat[decl.name][...] = value

    for name, members in hf_groups(cfg, prefix).items():
        first = members[0]
        kind = first.hf.layout
        if kind == "linear":
            full = get(name).T
            bounds = np.cumsum([d.shape[-1] for d in members])[:-1]
            for decl, part in zip(members, np.split(full, bounds, axis=-1)):
                put(decl, part)
        elif kind == "vector":
            put(first, get(name))
        elif kind == "conv1d":
            put(first, get(name)[:, 0, :].T)
        elif get.has(name):  # type: ignore[attr-defined]  # transformers' stacked experts
            put(first, get(name).transpose(0, 2, 1))
        elif get(_per_expert(name, 0)).T.shape != tuple(first.shape[1:]):
            put(first, np.stack([get(_per_expert(name, j)).T for j in range(first.shape[0])]))
        else:  # NVIDIA's one tensor per expert, written into the stacked parameter one at a time
            flat[first.name] = out = allocate(first.name, tuple(first.shape))
            for j in range(first.shape[0]):
                out[j] = get(_per_expert(name, j)).T
    return unflatten(flat)

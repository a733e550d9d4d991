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


def from_hf_tensors(cfg: ModelConfig, get: Callable[[str], np.ndarray], prefix: str) -> dict:
    """Our parameter pytree from a tensor getter (`get(name)`, `get.has(name)`) of either layout."""
    flat: dict[str, np.ndarray] = {}
    for name, members in hf_groups(cfg, prefix).items():
        first = members[0]
        kind = first.hf.layout
        if kind == "linear":
            full = get(name).T
            bounds = np.cumsum([d.shape[-1] for d in members])[:-1]
            for decl, part in zip(members, np.split(full, bounds, axis=-1)):
                flat[decl.name] = part
        elif kind == "vector":
            flat[first.name] = get(name)
        elif kind == "conv1d":
            flat[first.name] = get(name)[:, 0, :].T
        elif get.has(name):  # type: ignore[attr-defined]  # transformers' stacked experts
            flat[first.name] = get(name).transpose(0, 2, 1)
        else:
            flat[first.name] = np.stack([get(_per_expert(name, j)).T for j in range(first.shape[0])])
    return unflatten(flat)

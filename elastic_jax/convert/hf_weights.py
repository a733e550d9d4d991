"""Tensor-by-tensor mapping between our parameter pytree and NemotronH checkpoint names.

Two on-disk layouts exist: NVIDIA's (`backbone.*`, one tensor per expert) and transformers' in-memory one
(`model.*`, experts stacked [E, out, in]). Linear weights are [out, in] there and [in, out] here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from elastic_jax.config import ModelConfig

ToHF = Callable[[np.ndarray], np.ndarray]
T = lambda a: np.ascontiguousarray(np.asarray(a).T)  # noqa: E731


def _mamba_split(cfg: ModelConfig, layer: int) -> list[tuple[str, int]]:
    d_inner, gn = cfg.mamba_d_inner(layer), cfg.mamba_n_groups * cfg.ssm_state_size
    return [("in_z", d_inner), ("in_x", d_inner), ("in_B", gn), ("in_C", gn), ("in_dt", cfg.mamba_heads(layer))]


def layer_tensors(cfg: ModelConfig, layer: int, mixer: dict, prefix: str,
                  stacked: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(hf_name, array) pairs of one layer's mixer, in the chosen layout."""
    kind = cfg.pattern[layer]
    p = f"{prefix}.layers.{layer}.mixer"
    if kind == "M":
        parts = [np.asarray(mixer[name]["kernel"]) for name, _ in _mamba_split(cfg, layer)]
        yield f"{p}.in_proj.weight", T(np.concatenate(parts, axis=1))
        yield f"{p}.conv1d.weight", T(mixer["conv_kernel"])[:, None, :]
        yield f"{p}.conv1d.bias", np.asarray(mixer["conv_bias"])
        for name in ("dt_bias", "A_log", "D"):
            yield f"{p}.{name}", np.asarray(mixer[name])
        yield f"{p}.norm.weight", np.asarray(mixer["norm"]["weight"])
        yield f"{p}.out_proj.weight", T(mixer["out_proj"]["kernel"])
    elif kind == "*":
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"{p}.{name}.weight", T(mixer[name]["kernel"])
    elif kind == "E":
        yield f"{p}.gate.weight", T(mixer["gate"])
        yield f"{p}.gate.e_score_correction_bias", np.asarray(mixer["e_score_correction_bias"], np.float32)
        up, down = np.asarray(mixer["up_proj"]), np.asarray(mixer["down_proj"])
        if stacked:
            yield f"{p}.experts.up_proj", np.ascontiguousarray(up.transpose(0, 2, 1))
            yield f"{p}.experts.down_proj", np.ascontiguousarray(down.transpose(0, 2, 1))
        else:
            for j in range(up.shape[0]):
                yield f"{p}.experts.{j}.up_proj.weight", T(up[j])
                yield f"{p}.experts.{j}.down_proj.weight", T(down[j])
        for name in ("up_proj", "down_proj"):
            yield f"{p}.shared_experts.{name}.weight", T(mixer["shared_experts"][name]["kernel"])
    else:
        for name in ("up_proj", "down_proj"):
            yield f"{p}.{name}.weight", T(mixer[name]["kernel"])


def to_hf_tensors(cfg: ModelConfig, params: dict, layout: str = "nvidia") -> Iterator[tuple[str, np.ndarray]]:
    """Every checkpoint tensor of `params` (layout "nvidia": backbone.*, per-expert; "transformers": model.*)."""
    prefix, stacked = ("backbone", False) if layout == "nvidia" else ("model", True)
    yield f"{prefix}.embeddings.weight", np.asarray(params["embeddings"]["embedding"])
    for layer in range(cfg.num_layers):
        block = params[f"layers_{layer}"]
        yield f"{prefix}.layers.{layer}.norm.weight", np.asarray(block["norm"]["weight"])
        yield from layer_tensors(cfg, layer, block["mixer"], prefix, stacked)
    yield f"{prefix}.norm_f.weight", np.asarray(params["norm_f"]["weight"])
    yield "lm_head.weight", T(params["lm_head"]["kernel"])


def _mixer_from_hf(cfg: ModelConfig, layer: int, get: Callable[[str], np.ndarray], p: str) -> dict:
    kind = cfg.pattern[layer]
    if kind == "M":
        in_proj = get(f"{p}.in_proj.weight").T
        bounds = np.cumsum([size for _, size in _mamba_split(cfg, layer)])[:-1]
        parts = np.split(in_proj, bounds, 1)
        mixer = {name: {"kernel": part} for (name, _), part in zip(_mamba_split(cfg, layer), parts)}
        mixer["conv_kernel"] = get(f"{p}.conv1d.weight")[:, 0, :].T
        mixer["conv_bias"] = get(f"{p}.conv1d.bias")
        for name in ("dt_bias", "A_log", "D"):
            mixer[name] = get(f"{p}.{name}")
        mixer["norm"] = {"weight": get(f"{p}.norm.weight")}
        mixer["out_proj"] = {"kernel": get(f"{p}.out_proj.weight").T}
        return mixer
    if kind == "*":
        return {name: {"kernel": get(f"{p}.{name}.weight").T} for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    if kind == "E":
        num_experts = cfg.width("n_routed_experts", layer)
        mixer = {"gate": get(f"{p}.gate.weight").T, "e_score_correction_bias": get(f"{p}.gate.e_score_correction_bias")}
        if get.has(f"{p}.experts.up_proj"):  # type: ignore[attr-defined]
            mixer["up_proj"] = get(f"{p}.experts.up_proj").transpose(0, 2, 1)
            mixer["down_proj"] = get(f"{p}.experts.down_proj").transpose(0, 2, 1)
        else:
            mixer["up_proj"] = np.stack([get(f"{p}.experts.{j}.up_proj.weight").T for j in range(num_experts)])
            mixer["down_proj"] = np.stack([get(f"{p}.experts.{j}.down_proj.weight").T for j in range(num_experts)])
        mixer["shared_experts"] = {name: {"kernel": get(f"{p}.shared_experts.{name}.weight").T}
                                   for name in ("up_proj", "down_proj")}
        return mixer
    return {name: {"kernel": get(f"{p}.{name}.weight").T} for name in ("up_proj", "down_proj")}


def from_hf_tensors(cfg: ModelConfig, get: Callable[[str], np.ndarray], prefix: str) -> dict:
    """Our parameter pytree from a tensor getter (`get(name)`, `get.has(name)`) of either layout."""
    params: dict = {"embeddings": {"embedding": get(f"{prefix}.embeddings.weight")}}
    for layer in range(cfg.num_layers):
        p = f"{prefix}.layers.{layer}"
        params[f"layers_{layer}"] = {"norm": {"weight": get(f"{p}.norm.weight")},
                                     "mixer": _mixer_from_hf(cfg, layer, get, f"{p}.mixer")}
    params["norm_f"] = {"weight": get(f"{prefix}.norm_f.weight")}
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
    return params

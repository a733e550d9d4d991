"""Export a model (e.g. a budget of an elastic checkpoint: elastic_jax/deploy.py) as a GGUF file for llama.cpp.

The layout is what llama.cpp's own converter (`convert_hf_to_gguf.py`, class NemotronHModel and its MoE branch)
writes for a NemotronH checkpoint in NVIDIA's layout, so the file loads as arch `nemotron_h` (dense `-` layers)
or `nemotron_h_moe` (`E` layers):

- tensor names come from our Hugging Face names (the per-weight declarations) through gguf-py's tensor map;
- `A_log` becomes `ssm_a = -exp(A_log)` as a [n_heads, 1] column, `D` a [n_heads, 1] column, `dt_bias` is
  `ssm_dt.bias`, the convolution [channels, 1, width] is squeezed, the gated norm weight is reshaped to
  [n_groups, d_inner / n_groups] (llama.cpp normalises per group), `e_score_correction_bias` is `exp_probs_b.bias`;
- q/k rows get the converter's RoPE-order permutation (a no-op for attention scores: no RoPE here);
- experts are stacked [E, out, in] per projection (`ffn_up_exps`, `ffn_down_exps`), the shared expert is
  `ffn_{up,down}_shexp`;
- hyper-parameters: per-layer arrays of KV head counts (0 off attention layers) and feed-forward lengths (0 off
  MLP/MoE layers) tell llama.cpp which layers are recurrent; ssm keys (conv kernel, state size, group count,
  inner size, time-step rank = number of Mamba heads); expert count / used count / group count / shared
  count / weights norm / weights scale. Gating is sigmoid with the correction bias, fixed by the architecture.

llama.cpp decides the MLP kind per architecture, so a model mixing dense `-` and MoE `E` layers cannot be
expressed; that is refused before anything is written. Tensor types follow the converter: 1-D tensors, norms,
`ssm_a`/`ssm_d`, the convolution and the router stay float32; the rest is f32, f16 or q8_0 as asked (q8_0 falls
back to f16 for a tensor whose rows are not a multiple of 32, as the converter does).

Tokenizer: the byte tokenizer becomes a `gpt2`-type vocabulary (ids unchanged: the specials as control tokens,
each byte as GPT-2's printable stand-in for it, padded ids as unused), with one merge that can never apply
(llama.cpp requires a merges list), so every string encodes to its bytes and decodes back exactly. A Hugging
Face byte-level BPE `tokenizer.json` passes through as `gpt2` with its vocabulary, merges and added tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.convert.hf_config import ConversionError, config_to_hf
from elastic_jax.convert.hf_weights import to_hf_tensors
from elastic_jax.convert.tokenizer_export import bytes_to_unicode
from elastic_jax.data.tokenizer import ByteTokenizer
from elastic_jax.model.blocks import BLOCKS

GGUF_DTYPES = ("f32", "f16", "q8_0")
DEFAULT_ARCH, MOE_ARCH = "nemotron_h", "nemotron_h_moe"  # llama.cpp's names (gguf.MODEL_ARCH_NAMES)


class GGUFExportError(ConversionError):
    """A model that cannot be written as GGUF; the message says why and what is allowed."""


def _gguf():
    try:
        import gguf
    except ImportError as err:  # an optional dependency
        raise GGUFExportError("export-gguf needs the `gguf` package: pip install 'elastic-jax[gguf]'") from err
    return gguf


def check_exportable(cfg: ModelConfig, dtype: str) -> None:
    """Raise GGUFExportError for anything llama.cpp cannot run, before anything is converted or written."""
    if dtype not in GGUF_DTYPES:
        raise GGUFExportError(f"export-gguf: --dtype {dtype!r}; allowed: {', '.join(GGUF_DTYPES)}")
    gguf_arch(cfg)
    config_to_hf(cfg)  # the same per-kind uniform widths Hugging Face export needs


def gguf_arch(cfg: ModelConfig) -> str:
    """The one llama.cpp architecture every layer's block kind runs under (elastic_jax/model/blocks.py), or
    GGUFExportError when the pattern needs two (dense '-' and MoE 'E' layers together)."""
    needs = {c: BLOCKS[c].gguf_arch for c in sorted(set(cfg.pattern)) if BLOCKS[c].gguf_arch}
    if len(set(needs.values())) > 1:
        kinds = " and ".join(f"'{c}'" for c in needs)
        runs = "; ".join(f"{arch} runs only '{c}'" for c, arch in needs.items())
        raise GGUFExportError(
            f"export-gguf: model.pattern {cfg.pattern!r} mixes dense MLP and MoE layers ({kinds}); llama.cpp's "
            f"{runs} (with 'M' and '*'), so this model cannot be exported as GGUF")
    return next(iter(needs.values()), DEFAULT_ARCH)


def _per_layer(cfg: ModelConfig, hf: dict, key: str) -> list[int]:
    """A per-layer GGUF key: the config field each layer's block kind maps it to (0 for kinds without one)."""
    return [hf[dict(BLOCKS[c].gguf_layer)[key]] if key in dict(BLOCKS[c].gguf_layer) else 0 for c in cfg.pattern]


# ----------------------------------------------------------------------------------------------- hyper-parameters

def _write_hparams(w, cfg: ModelConfig, moe: bool) -> None:
    """The keys llama.cpp's converter writes for NemotronH (GraniteHybrid + NemotronH overrides)."""
    hf = config_to_hf(cfg)
    n = cfg.num_layers
    w.add_block_count(n)
    w.add_context_length(2**20)  # no positional limit (no RoPE); the converter writes the same
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(hf["num_attention_heads"])
    w.add_head_count_kv(_per_layer(cfg, hf, "head_count_kv"))
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.hidden_size // hf["num_attention_heads"])
    w.add_rope_scaling_finetuned(False)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_vocab_size(cfg.vocab_size)
    w.add_ssm_conv_kernel(cfg.conv_kernel)
    w.add_ssm_state_size(cfg.ssm_state_size)
    w.add_ssm_group_count(cfg.mamba_n_groups)
    w.add_ssm_inner_size(hf["mamba_num_heads"] * cfg.mamba_head_dim)
    w.add_ssm_time_step_rank(hf["mamba_num_heads"])
    w.add_feed_forward_length(_per_layer(cfg, hf, "feed_forward_length"))
    if not moe:
        return
    w.add_expert_count(hf["n_routed_experts"])
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_group_count(cfg.n_group)
    w.add_expert_group_used_count(cfg.topk_group)
    w.add_expert_feed_forward_length(hf["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(hf["moe_shared_expert_intermediate_size"])
    w.add_expert_shared_count(1)
    w.add_expert_weights_norm(cfg.norm_topk_prob)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)


# ------------------------------------------------------------------------------------------------------- tensors

def gguf_tensors(cfg: ModelConfig, params: dict, moe: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every tensor, transformed as llama.cpp's NemotronH converter does."""
    gguf = _gguf()
    arch = gguf.MODEL_ARCH.NEMOTRON_H_MOE if moe else gguf.MODEL_ARCH.NEMOTRON_H
    names = gguf.get_tensor_name_map(arch, cfg.num_layers)
    n_groups, hf = cfg.mamba_n_groups, config_to_hf(cfg)
    experts: dict[tuple[int, str], list[np.ndarray]] = {}

    def mapped(hf_name: str) -> str:
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GGUFExportError(f"export-gguf: no GGUF name for tensor {hf_name!r}")
        return new

    for name, array in to_hf_tensors(cfg, params, "nvidia"):
        a = np.asarray(array, dtype=np.float32)
        if ".mixer.experts." in name:  # one tensor per expert, stacked per projection once all are seen
            head, tail = name.split(".mixer.experts.")
            j, proj = tail.split(".")[:2]
            bid = int(head.rsplit(".", 1)[1])
            experts.setdefault((bid, proj), []).append(a)
            if int(j) == cfg.width("n_routed_experts", bid) - 1:
                yield mapped(f"model.layers.{bid}.mlp.experts.{proj}.weight"), np.stack(experts.pop((bid, proj)))
            continue
        if name.endswith(".mixer.A_log"):
            yield mapped(name), -np.exp(a).reshape(-1, 1)
        elif name.endswith(".mixer.D"):
            yield mapped(name), a.reshape(-1, 1)
        elif name.endswith(".mixer.dt_bias"):
            yield mapped(name.replace("dt_bias", "dt.bias")), a
        elif name.endswith(".mixer.conv1d.weight"):
            yield mapped(name), a[:, 0, :]
        elif name.endswith(".mixer.norm.weight"):
            yield mapped(name), a.reshape(n_groups, -1)
        elif name.endswith((".mixer.q_proj.weight", ".mixer.k_proj.weight")):
            heads = hf["num_attention_heads" if ".q_proj" in name else "num_key_value_heads"]
            yield mapped(name), _rope_permute(a, heads)
        elif name.endswith(".mixer.gate.e_score_correction_bias"):
            yield mapped(name.replace("e_score_correction_bias", "e_score_correction.bias")), a
        else:
            yield mapped(name), a
    if experts:
        raise GGUFExportError(f"export-gguf: incomplete expert tensors {sorted(experts)}")


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute, which the converter applies to q/k rows: (half, pair) -> (pair, half) in each head.

    NemotronH has no RoPE, and q and k rows move alike within each head, so attention is unchanged.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(gguf, name: str, array: np.ndarray, dtype: str):
    """The converter's rule: 1-D, norms, non-`.weight` tensors, the convolution and the router stay float32."""
    t = gguf.GGMLQuantizationType
    keep_f32 = (array.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
                or ".ssm_conv1d." in name or ".ffn_gate_inp." in name)
    if keep_f32 or dtype == "f32":
        return t.F32
    return t.F16 if dtype == "f16" else t.Q8_0


def _encode_tensor(gguf, array: np.ndarray, qtype) -> tuple[np.ndarray, Any]:
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # rows not a multiple of the block size: f16, as the converter falls back
        f16 = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(array, f16), f16


# ----------------------------------------------------------------------------------------------------- tokenizer

def _byte_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the byte tokenizer at the model's (possibly padded) vocabulary size."""
    gguf = _gguf()
    tt = gguf.TokenType
    tokens, types = list(ByteTokenizer.SPECIAL_TOKENS), [tt.CONTROL] * ByteTokenizer.NUM_SPECIAL
    chars = bytes_to_unicode()
    tokens += [chars[b] for b in range(256)]
    types += [tt.NORMAL] * 256
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(tt.UNUSED)
    # llama.cpp needs a merges list; a merge of two control tokens never applies to byte symbols
    return tokens, types, [f"{tokens[tokenizer.bos_id]} {tokens[tokenizer.eos_id]}"]


def _hf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, types, merges) of a Hugging Face byte-level BPE tokenizer.json, as the converter's gpt2 path."""
    gguf = _gguf()
    tt = gguf.TokenType
    data = json.loads(tokenizer.to_dict()["tokenizer_json"])
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"export-gguf: tokenizer {tokenizer.source}: model type {model.get('type')!r}; only "
                              "byte-level BPE tokenizer.json (or the byte tokenizer) can be exported to GGUF")
    by_id = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in data.get("added_tokens") or []}
    if max([*by_id, *added]) >= vocab_size:
        raise GGUFExportError(f"export-gguf: tokenizer {tokenizer.source} has ids beyond model.vocab_size "
                              f"{vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(tt.CONTROL if added[i].get("special") else tt.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(tt.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(tt.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges or [f"{tokens[tokenizer.bos_id]} {tokens[tokenizer.eos_id]}"]


def _write_vocab(w, tokenizer, cfg: ModelConfig) -> None:
    if isinstance(tokenizer, ByteTokenizer):
        if cfg.vocab_size < ByteTokenizer.VOCAB_SIZE:
            raise GGUFExportError(f"export-gguf: model.vocab_size {cfg.vocab_size} is smaller than the byte "
                                  f"tokenizer's {ByteTokenizer.VOCAB_SIZE}")
        tokens, types, merges = _byte_vocab(tokenizer, cfg.vocab_size)
    else:
        tokens, types, merges = _hf_vocab(tokenizer, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    w.add_add_bos_token(True)  # our prompts start with bos (tokenizer.encode(..., add_bos=True))
    w.add_add_eos_token(False)


# -------------------------------------------------------------------------------------------------------- export

def to_gguf(cfg: ModelConfig, params: dict, tokenizer, out: str | os.PathLike, dtype: str = "f32", *,
            name: str = "elastic_jax", overwrite: bool = False) -> Path:
    """Write `params` (one model, e.g. a budget sliced from an elastic checkpoint) with `tokenizer` to `out`.

    Refuses, before converting anything: a dtype other than f32/f16/q8_0, a pattern mixing `-` and `E`, per-layer
    widths, and an existing `out` unless `overwrite`. The file is written aside and renamed when complete.
    """
    check_exportable(cfg, dtype)
    out = Path(out)
    if out.is_dir():
        raise FileExistsError(f"{out} is a directory; --out names the .gguf file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out, or pass --overwrite to replace it")
    gguf = _gguf()
    arch = gguf_arch(cfg)
    moe = arch == MOE_ARCH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_hparams(w, cfg, moe)
        _write_vocab(w, tokenizer, cfg)
        for tname, array in gguf_tensors(cfg, jax.device_get(params), moe):
            data, qtype = _encode_tensor(gguf, array, _tensor_type(gguf, tname, array, dtype))
            w.add_tensor(tname, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

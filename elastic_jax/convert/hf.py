"""Import and export of Hugging Face NemotronH checkpoint directories (sharded safetensors + index)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from elastic_jax.config import ModelConfig
from elastic_jax.convert.hf_config import ConversionError, config_from_hf, config_to_hf
from elastic_jax.convert.hf_weights import from_hf_tensors, to_hf_tensors
from elastic_jax.convert.tokenizer_export import write_tokenizer
from elastic_jax.model.functional import param_shapes
from elastic_jax.model_io import check_output, save_model, writing_output

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")
_EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class _TensorReader:
    """Lazy reads of named tensors from the safetensors files of a directory (with or without an index)."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise ConversionError(f"{path}: no *.safetensors files (and no model.safetensors.index.json)")
            weight_map = {}
            for f in files:
                with safe_open(f, framework="numpy") as handle:
                    weight_map.update({k: f.name for k in handle.keys()})
        self.path, self.weight_map = path, weight_map
        self._handles: dict[str, object] = {}
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise ConversionError(f"{self.path}: missing tensor {name!r} "
                                  "(the checkpoint does not match its config.json)")
        file = self.weight_map[name]
        if file not in self._handles:
            if not (self.path / file).exists():
                raise ConversionError(f"{self.path}: shard {file} named in the index is missing")
            self._handles[file] = safe_open(self.path / file, framework="numpy")
        self.used.add(name)
        return np.asarray(self._handles[file].get_tensor(name))  # type: ignore[attr-defined]


def _check_shapes(cfg: ModelConfig, params: dict) -> dict:
    """Cast to float32 and compare every array with the shapes the config implies."""
    expected = param_shapes(cfg)
    flat_exp = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        if path not in flat_exp:
            raise ConversionError(f"unexpected parameter {name}")
        if tuple(leaf.shape) != tuple(flat_exp[path].shape):
            raise ConversionError(f"tensor for {name} has shape {tuple(leaf.shape)}; config.json implies "
                                  f"{tuple(flat_exp[path].shape)}")
        out[path] = np.asanyarray(leaf, dtype=np.float32)  # file-backed arrays stay so
    missing = set(flat_exp) - set(out)
    if missing:
        raise ConversionError(f"missing parameters: {sorted(jax.tree_util.keystr(p) for p in missing)[:5]}")
    treedef = jax.tree_util.tree_structure(expected)
    return jax.tree_util.tree_unflatten(treedef, [out[p] for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]])


def _open_hf(path: Path) -> tuple[ModelConfig, _TensorReader, str]:
    """(config, tensor reader, name prefix) of a NemotronH directory in NVIDIA's or transformers' layout."""
    if not (path / "config.json").exists():
        raise ConversionError(f"{path}: no config.json; expected a Hugging Face NemotronH model directory")
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    reader = _TensorReader(path)
    if reader.has("backbone.embeddings.weight"):
        return cfg, reader, "backbone"
    if reader.has("model.embeddings.weight"):
        return cfg, reader, "model"
    raise ConversionError(f"{path}: missing tensor 'backbone.embeddings.weight' (or 'model.embeddings.weight')")


def from_hf(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(config, float32 params) of a NemotronH directory in NVIDIA's or transformers' layout."""
    cfg, reader, prefix = _open_hf(Path(path))
    return cfg, _check_shapes(cfg, from_hf_tensors(cfg, reader, prefix))


class _FileBacked(np.memmap):
    """A file-backed array that Orbax writes from in place: its deepcopy (Orbax's guard against a host array
    changing while it is saved) is the array itself, not a copy in memory. Nothing changes them while saving."""

    def __deepcopy__(self, memo: dict) -> _FileBacked:
        return self


def import_hf(path: str | os.PathLike, out: str | os.PathLike, metadata: dict | None = None, *,
              overwrite: bool = False) -> ModelConfig:
    """Convert a NemotronH directory into an elastic_jax checkpoint at `out` with bounded host memory.

    Tensors are read one at a time (safetensors `safe_open`) and written as float32 into file-backed arrays
    (numpy memmaps in a scratch directory beside `out`, removed afterwards) that Orbax then writes out; the
    process holds about one source tensor at a time instead of the whole model (126 GB in fp32 at the Nano
    shape), at the cost of that much scratch disk while converting.
    """
    check_output(out, overwrite)  # before converting anything
    cfg, reader, prefix = _open_hf(Path(path))
    parent = Path(out).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.import-", dir=parent))
    try:
        def allocate(name: str, shape: tuple[int, ...]) -> np.ndarray:
            file = scratch / (name.replace("/", ".") + ".npy")
            return np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=shape).view(_FileBacked)

        params = _check_shapes(cfg, from_hf_tensors(cfg, reader, prefix, allocate))
        save_model(out, cfg, params, metadata, overwrite=overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cfg


def _shards(tensors: list[tuple[str, np.ndarray]], max_shard_bytes: int) -> list[list[tuple[str, np.ndarray]]]:
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = item[1].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def to_hf(cfg: ModelConfig, params: dict, path: str | os.PathLike, *, dtype: str = "float32",
          max_shard_bytes: int = 2 * 1024**3, tokenizer_dir: str | os.PathLike | None = None,
          layout: str = "nvidia", overwrite: bool = False, tokenizer=None) -> Path:
    """Write `params` as a NemotronH directory: sharded safetensors + index, config.json, generation_config.json.

    e_score_correction_bias stays float32 whatever `dtype` is, as NVIDIA publishes it. Tokenizer files are
    copied from `tokenizer_dir` when given, or written from `tokenizer` (an elastic_jax Tokenizer:
    convert/tokenizer_export.py) so that `AutoTokenizer` loads the export. `path` follows the output rule of
    `model_io.writing_output`: a non-empty directory is refused unless `overwrite`, and nothing is left behind
    when writing fails.
    """
    if dtype not in _EXPORT_DTYPES:
        raise ConversionError(f"export dtype {dtype!r}; allowed: {sorted(_EXPORT_DTYPES)}")
    if layout not in ("nvidia", "transformers"):
        raise ConversionError(f"export layout {layout!r}; allowed: 'nvidia', 'transformers'")
    check_output(path, overwrite)  # before converting anything
    hf_config = config_to_hf(cfg, dtype)
    _check_shapes(cfg, jax.device_get(params))
    tensors = []
    for name, array in to_hf_tensors(cfg, jax.device_get(params), layout):
        target = np.float32 if name.endswith("e_score_correction_bias") else _EXPORT_DTYPES[dtype]
        tensors.append((name, np.ascontiguousarray(array.astype(target))))
    with writing_output(path, overwrite) as tmp:
        _write_hf(tmp, cfg, hf_config, _shards(tensors, max_shard_bytes), tokenizer_dir)
        if tokenizer is not None and tokenizer_dir is None:
            write_tokenizer(tokenizer, tmp)
    return Path(path)


def _file_mode() -> int:
    """The mode a new regular file gets here (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_hf(path: Path, cfg: ModelConfig, hf_config: dict, shards: list[list[tuple[str, np.ndarray]]],
              tokenizer_dir: str | os.PathLike | None) -> None:
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(dict(shard), str(path / fname), metadata={"format": "pt"})
        os.chmod(path / fname, _file_mode())  # safetensors creates its files 0600; these are ordinary outputs
        for name, array in shard:
            weight_map[name] = fname
            total += array.nbytes
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_dir is not None:
        for fname in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / fname).exists():
                shutil.copy(Path(tokenizer_dir) / fname, path / fname)

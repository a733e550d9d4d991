"""Your own data as records: JSONL, Parquet and ArrayRecord files, read by index for the grain pipeline.

A record is one JSON-like object: `{"text": "..."}` (a document) or `{"messages": [{"role", "content"}, ...]}`
(a conversation, rendered by data/chat.py with loss only on assistant turns); the field names are configurable.
- JSONL (`*.jsonl`): one object per line; a line index is built once, lines are parsed on demand.
- Parquet (`*.parquet`): one row per record (columns = fields; messages as a list of structs). Rows are read a
  row group at a time, the last few groups cached, so keep row groups modest (e.g. 1-10k rows) for shuffled reads.
- ArrayRecord (`*.array_record`, also sharded `*.array_record-00000-of-00008`): each record the UTF-8 JSON of one
  object, read through grain's ArrayRecordDataSource.
The same records in any of the three formats give the same examples. Files are taken in sorted path order and
concatenated; the eval split is a fixed, evenly spaced subset of record positions (see `RecordSplit`).
"""

from __future__ import annotations

import bisect
import collections
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from elastic_jax.data.chat import check_messages, encode_chat, resolve_template
from elastic_jax.data.tokenizer import Tokenizer

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".array_record": "array_record"}


def record_format(path: Path) -> str | None:
    """'jsonl', 'parquet' or 'array_record' from the file name, or None for other files."""
    name = path.name
    for ext, kind in FORMATS.items():
        if name.endswith(ext) or (kind == "array_record" and f"{ext}-" in name):
            return kind
    return None


def list_record_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Sorted record files named by `paths` (files, or directories searched recursively by extension)."""
    files: list[Path] = []
    for entry in paths:
        path = Path(os.path.expanduser(os.fspath(entry)))
        if not path.exists():
            raise FileNotFoundError(f"data.record_paths: {entry} does not exist")
        if path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and record_format(p)]
        elif record_format(path):
            files.append(path)
        else:
            raise ValueError(f"data.record_paths: {entry} is not a record file (expected one of "
                             f"{sorted(FORMATS)} endings)")
    files = sorted(set(files))
    if not files:
        raise ValueError(f"data.record_paths: no {sorted(FORMATS)} files in {[os.fspath(p) for p in paths]}")
    return files


class JsonlReader:
    """Random access to the non-empty lines of a JSONL file (offsets indexed once, lines parsed on demand)."""

    def __init__(self, path: Path, chunk: int = 1 << 24):
        self.path = path
        newlines: list[np.ndarray] = []
        size = 0
        with open(path, "rb") as f:
            while block := f.read(chunk):
                newlines.append(np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n")) + size)
                size += len(block)
        ends = np.concatenate(newlines + [np.array([size], np.int64)]).astype(np.int64)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        keep = ends > starts  # blank lines (and the empty tail after a final newline) hold no record
        self.starts, self.ends = starts[keep], ends[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with open(self.path, "rb") as f:
            f.seek(int(self.starts[i]))
            line = f.read(int(self.ends[i] - self.starts[i]))
        return _parse(line, f"{self.path} record {i}")


class ParquetReader:
    """Random access to the rows of a Parquet file, a row group at a time (the last few groups cached)."""

    def __init__(self, path: Path, cached_groups: int = 4):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"data.record_paths: reading {path} needs pyarrow: "
                              "pip install 'elastic_jax[data]'") from None

        self.path = path
        meta = pq.ParquetFile(path).metadata
        self.group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._cache: collections.OrderedDict[int, list[dict[str, Any]]] = collections.OrderedDict()
        self._cached_groups = cached_groups
        self._file = None

    def __len__(self) -> int:
        return int(self.group_starts[-1])

    def _group(self, g: int) -> list[dict[str, Any]]:
        if g not in self._cache:
            import pyarrow.parquet as pq

            if self._file is None:
                self._file = pq.ParquetFile(self.path)
            self._cache[g] = self._file.read_row_group(g).to_pylist()
            while len(self._cache) > self._cached_groups:
                self._cache.popitem(last=False)
        self._cache.move_to_end(g)
        return self._cache[g]

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = int(np.searchsorted(self.group_starts, i, side="right")) - 1
        return self._group(g)[i - int(self.group_starts[g])]


class ArrayRecordReader:
    """Random access to an ArrayRecord file whose records are UTF-8 JSON objects (via grain's data source)."""

    def __init__(self, path: Path):
        self.path = path
        self._source = grain.sources.ArrayRecordDataSource([str(path)])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _parse(self._source[i], f"{self.path} record {i}")


READERS = {"jsonl": JsonlReader, "parquet": ParquetReader, "array_record": ArrayRecordReader}


def _parse(data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"data.record_paths: {where} is not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"data.record_paths: {where} is a JSON {type(record).__name__}, expected an object")
    return record


class RecordSplit:
    """Which record positions belong to a split: "eval" is ceil(n * fraction) evenly spaced positions (at least
    one when fraction > 0 and n > 1), "train" the rest, None all. O(eval size) memory whatever n is."""

    def __init__(self, n: int, split: str | None, eval_fraction: float):
        if split not in (None, "train", "eval"):
            raise ValueError(f"split must be None, 'train' or 'eval', got {split!r}")
        m = min(math.ceil(n * eval_fraction), n - 1) if eval_fraction > 0 and n > 1 else 0
        self.split, self.n = split, n
        self.eval_positions = ((np.arange(m) + 0.5) * n / max(m, 1)).astype(np.int64)
        # train records before each eval position: train index i skips the eval positions with fewer before them
        self._train_before = self.eval_positions - np.arange(m)

    def __len__(self) -> int:
        if self.split is None:
            return self.n
        return len(self.eval_positions) if self.split == "eval" else self.n - len(self.eval_positions)

    def position(self, i: int) -> int:
        """The position among all records of the split's i-th record."""
        if self.split is None:
            return i
        if self.split == "eval":
            return int(self.eval_positions[i])
        return i + int(np.searchsorted(self._train_before, i, side="right"))


class RecordSource:
    """Random-access records (dicts) of the files under `paths`, for grain: `source[i]` reads record i of `split`."""

    def __init__(self, paths: Sequence[str | os.PathLike], split: str | None = None, eval_fraction: float = 0.0):
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"data.record_eval_fraction: must be in [0, 1), got {eval_fraction}")
        self.files = list_record_files(paths)
        self.readers = [READERS[record_format(f)](f) for f in self.files]
        self.offsets = [0]
        for reader in self.readers:
            self.offsets.append(self.offsets[-1] + len(reader))
        self.split = RecordSplit(self.offsets[-1], split, eval_fraction)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if len(self) == 0:
            raise IndexError(f"the {self.split.split} split of these records is empty")
        position = self.split.position(int(index) % len(self))
        f = bisect.bisect_right(self.offsets, position) - 1
        return self.readers[f][position - self.offsets[f]]

    def __repr__(self) -> str:
        return f"RecordSource({len(self.files)} files, {len(self)} records, split={self.split.split!r})"


def record_kind(record: Mapping[str, Any], text_field: str, messages_field: str) -> str:
    """'chat' when the record has messages, 'text' when it has text; else a ValueError naming both fields."""
    if record.get(messages_field) is not None:
        return "chat"
    if isinstance(record.get(text_field), str):
        return "text"
    raise ValueError(f"data.record_text_field: a record needs a {text_field!r} string (data.record_text_field) or a "
                     f"{messages_field!r} list (data.record_messages_field); it has fields {sorted(record)}")


def encode_record(record: Mapping[str, Any], tokenizer: Tokenizer, template: str | None, text_field: str = "text",
                  messages_field: str = "messages") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask): a document is bos + text + eos, all trained; a conversation trains its assistant turns."""
    if record_kind(record, text_field, messages_field) == "chat":
        messages = check_messages(record[messages_field], f"data.record_messages_field ({messages_field!r})")
        return encode_chat(messages, tokenizer, template)
    tokens = np.asarray(tokenizer.encode(record[text_field], add_bos=True, add_eos=True), dtype=np.int32)
    return tokens, np.ones_like(tokens)


def record_dataset(data_cfg: Any, tokenizer: Tokenizer, seed: int, split: str, process_index: int,
                   process_count: int):
    """The records' grain MapDataset for one process (source -> shuffle -> repeat -> slice -> encode), or None
    when `split` holds no record. `data_cfg` is a DataConfig (its record_* fields and chat_template)."""
    source = RecordSource(data_cfg.record_paths, split, data_cfg.record_eval_fraction)
    if len(source) == 0:
        return None
    template = resolve_template(data_cfg.chat_template, tokenizer)
    encode = functools.partial(encode_record, tokenizer=tokenizer, template=template,
                               text_field=data_cfg.record_text_field, messages_field=data_cfg.record_messages_field)
    return (grain.MapDataset.source(source).shuffle(seed=seed).repeat()[process_index::process_count].map(encode))


def validate_records(cfg: Any, check) -> None:
    """Check the record_* fields and chat_template of a DataConfig; `check(ok, field, message)` raises."""
    check(isinstance(cfg.record_paths, tuple) and all(isinstance(p, str) for p in cfg.record_paths), "record_paths",
          f"must be a list of file or directory paths, got {cfg.record_paths!r}")
    check(cfg.record_weight == 0 or len(cfg.record_paths) > 0, "record_paths",
          f"must name at least one JSONL / Parquet / ArrayRecord file or directory when record_weight > 0 "
          f"(record_weight={cfg.record_weight})")
    for path in cfg.record_paths:
        check(Path(os.path.expanduser(path)).exists(), "record_paths", f"{path} does not exist")
    for name in ("record_text_field", "record_messages_field"):
        value = getattr(cfg, name)
        check(isinstance(value, str) and value != "", name, f"must be a non-empty field name, got {value!r}")
    fraction = cfg.record_eval_fraction
    check(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 <= fraction < 1.0,
          "record_eval_fraction", f"must be in [0, 1), got {fraction!r}")
    check(isinstance(cfg.record_keep_whole, bool), "record_keep_whole",
          f"must be True or False, got {cfg.record_keep_whole!r}")
    template = cfg.chat_template
    check(template is None or (isinstance(template, str) and (template.strip().lower() == "simple"
                                                             or Path(os.path.expanduser(template)).exists())),
          "chat_template", f"must be None, 'simple', or an existing .jinja / tokenizer_config.json file or directory, "
                           f"got {template!r}")

"""Configuration of the data pipeline: one frozen, validated value, convertible to and from a plain dict.

Errors are ConfigErrors (ValueErrors) whose message starts with the dotted field name (`data.text_paths: ...`),
so a bad command-line override points at the field to fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elastic_jax import schema
from elastic_jax.data.reasoning import ReasoningTaskConfig
from elastic_jax.data.records import validate_records
from elastic_jax.data.text import DEFAULT_EXTENSIONS
from elastic_jax.schema import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig(schema.Section):
    """What the training data is made of and how it is read.

    reasoning_weight / text_weight: share of *tokens* drawn from the reasoning task and from text.
    text_paths: files or directories of text; empty means the Python standard library's source.
    text_extensions: file endings picked up inside directories of text_paths.
    text_max_files: keep only the first N files (sorted) of the text corpus; None keeps all.
    text_eval_fraction: share of text files held out for evaluation (by path hash).
    reasoning: difficulty knobs and seed of the synthetic reasoning task.
    tokenizer: None/"byte" for the byte tokenizer, or a tokenizer.json file / directory.
    shuffle_seed: seed of the data order; None uses the seed passed to the pipeline (the run seed).
    num_workers: 0 reads synchronously; N > 0 prepares up to N batches ahead in a background thread.
    document_aware: packed rows carry `segment_ids` and no token sees another document (attention, Mamba conv and
        state), as each problem runs alone at evaluation; False trains on the row as one sequence.
    record_weight: share of tokens from your own records (record_paths); 0 leaves them out.
    record_paths: JSONL / Parquet / ArrayRecord files, or directories of them (data/records.py).
    record_text_field / record_messages_field: a record is a document (text) or a chat (messages, loss only on
        assistant turns).
    record_eval_fraction: share of records held out for evaluation (evenly spaced positions).
    record_keep_whole: a record that fits in a row is never split across rows (the gap is filled or padded).
    chat_template: None (the tokenizer's own, else the built-in "simple"), "simple", or a .jinja file /
        tokenizer_config.json / directory holding a Hugging Face chat template (data/chat.py).
    """

    SECTION = "data"

    reasoning_weight: float = 0.7  #: share of tokens from the synthetic reasoning task
    text_weight: float = 0.3  #: share of tokens from text files (text_paths)
    text_paths: tuple[str, ...] = ()
    text_extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    text_max_files: int | None = None
    text_eval_fraction: float = 0.02
    reasoning: ReasoningTaskConfig = dataclasses.field(default_factory=ReasoningTaskConfig)
    tokenizer: str | None = None
    shuffle_seed: int | None = None
    num_workers: int = 0
    document_aware: bool = True
    record_weight: float = 0.0
    record_paths: tuple[str, ...] = ()
    record_text_field: str = "text"  #: field of a document record's text
    record_messages_field: str = "messages"  #: field of a chat record's messages (loss on assistant turns)
    record_eval_fraction: float = 0.01
    record_keep_whole: bool = True
    chat_template: str | None = None

    def __post_init__(self):
        if isinstance(self.text_paths, (str, os.PathLike)):
            object.__setattr__(self, "text_paths", (os.fspath(self.text_paths),))
        else:
            object.__setattr__(self, "text_paths", tuple(os.fspath(p) for p in self.text_paths))
        if isinstance(self.record_paths, (str, os.PathLike)):
            object.__setattr__(self, "record_paths", (os.fspath(self.record_paths),))
        else:
            object.__setattr__(self, "record_paths", tuple(os.fspath(p) for p in self.record_paths))
        if isinstance(self.text_extensions, str):
            object.__setattr__(self, "text_extensions", (self.text_extensions,))
        else:
            object.__setattr__(self, "text_extensions", tuple(self.text_extensions))
        if isinstance(self.reasoning, Mapping):
            object.__setattr__(self, "reasoning", ReasoningTaskConfig.from_dict(self.reasoning))
        if isinstance(self.tokenizer, os.PathLike):
            object.__setattr__(self, "tokenizer", os.fspath(self.tokenizer))

    @property
    def weights(self) -> tuple[float, float]:
        """(reasoning, text) weights normalised to sum to 1."""
        total = self.reasoning_weight + self.text_weight
        return self.reasoning_weight / total, self.text_weight / total

    def replace(self, **changes: Any) -> DataConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> DataConfig:
        """Raise ConfigError naming the first invalid field; returns self so it can be chained."""
        validate(self)
        return self



def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(message, field, DataConfig.SECTION)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(cfg: DataConfig) -> None:
    """Raise ConfigError naming the first invalid field of `cfg` and what is allowed."""
    for name in ("reasoning_weight", "text_weight", "record_weight"):
        value = getattr(cfg, name)
        _check(_is_number(value) and value >= 0, name, f"must be a finite number >= 0, got {value!r}")
    _check(cfg.reasoning_weight + cfg.text_weight + cfg.record_weight > 0, "reasoning_weight",
           "reasoning_weight + text_weight + record_weight must be > 0 (nothing to train on)")
    validate_records(cfg, _check)
    for path in cfg.text_paths:
        _check(Path(os.path.expanduser(path)).exists(), "text_paths", f"{path} does not exist")
    _check(len(cfg.text_extensions) > 0, "text_extensions", "must name at least one extension")
    for ext in cfg.text_extensions:
        _check(isinstance(ext, str) and ext.startswith(".") and len(ext) > 1, "text_extensions",
               f"entries must look like '.py', got {ext!r}")
    _check(cfg.text_max_files is None or (isinstance(cfg.text_max_files, int) and cfg.text_max_files > 0),
           "text_max_files", f"must be a positive integer or None, got {cfg.text_max_files!r}")
    _check(_is_number(cfg.text_eval_fraction) and 0.0 <= cfg.text_eval_fraction < 1.0, "text_eval_fraction",
           f"must be in [0, 1), got {cfg.text_eval_fraction!r}")
    _check(isinstance(cfg.reasoning, ReasoningTaskConfig), "reasoning",
           f"must be a ReasoningTaskConfig or a dict of its fields, got {type(cfg.reasoning).__name__}")
    if cfg.tokenizer is not None and cfg.tokenizer.strip().lower() not in ("", "byte"):
        _check(Path(os.path.expanduser(cfg.tokenizer)).exists(), "tokenizer",
               f"{cfg.tokenizer} does not exist (expected 'byte', a tokenizer.json file, or a directory with one)")
    _check(cfg.shuffle_seed is None or (isinstance(cfg.shuffle_seed, int) and 0 <= cfg.shuffle_seed < 2**32),
           "shuffle_seed", f"must be None or an integer in [0, 2**32), got {cfg.shuffle_seed!r}")
    _check(isinstance(cfg.num_workers, int) and cfg.num_workers >= 0, "num_workers",
           f"must be an integer >= 0, got {cfg.num_workers!r}")
    _check(isinstance(cfg.document_aware, bool), "document_aware",
           f"must be True or False, got {cfg.document_aware!r}")

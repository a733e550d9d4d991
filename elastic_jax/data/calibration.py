"""Calibration batches: the token batches that importance ranking and the router-free budget search run on.

One builder for every caller (`elastic-jax importance`, elastification's ranking, `slice` of a ranked parent),
so a ranking sees the data of the experiment that uses it, tokenised the way the model was trained: with the
checkpoint's own tokenizer (a real Nemotron's 131K-token vocabulary), not the byte tokenizer by default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from elastic_jax.config import ConfigError
from elastic_jax.data.config import DataConfig
from elastic_jax.data.pipeline import make_eval_batches
from elastic_jax.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)


def calibration_batches(data: DataConfig, tokenizer: Tokenizer, num_batches: int, seq_len: int, batch_size: int,
                        *, max_seq_len: int | None = None) -> list[dict[str, np.ndarray]]:
    """`num_batches` batches {"inputs": [batch_size, seq_len] tokens} drawn from `data`'s held-out split with
    `tokenizer`, with the rows' "segment_ids" when `data` packs documents apart (a document-aware parent is
    scored as it was trained: each document alone).

    The held-out split is read in a fixed order, so every run (and every process) ranks on the same batches.
    """
    for name, value in (("num_batches", num_batches), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"calibration {name}: must be a positive integer, got {value!r}")
    try:
        batches = make_eval_batches(data, tokenizer, seq_len, batch_size, num_batches, 0, 1, max_seq_len=max_seq_len)
    except ValueError as err:
        raise ConfigError(f"calibration data: {err}") from None
    return [{key: np.asarray(b[key]) for key in ("inputs", "segment_ids") if key in b} for b in batches]


def _data_of(experiment: Mapping[str, Any] | None) -> DataConfig | None:
    section = (experiment or {}).get("data")
    if section is None:
        return None
    section = section.to_dict() if hasattr(section, "to_dict") else section
    try:
        return DataConfig.from_dict(section).validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def calibration_source(meta: Mapping[str, Any], vocab_size: int, experiment: Mapping[str, Any] | None = None
                       ) -> tuple[DataConfig, Tokenizer]:
    """(data, tokenizer) to calibrate a checkpoint's model with.

    Data: the `data` section of `experiment` when given (e.g. `--config`), else of the experiment the checkpoint
    was trained in (its metadata), else the built-in default. Tokenizer: the checkpoint's own (`meta["tokenizer"]`),
    else the data section's `tokenizer`, else the byte tokenizer (with a warning for a large vocabulary).
    """
    data = _data_of(experiment) or _data_of(meta.get("experiment")) or DataConfig()
    try:
        if meta.get("tokenizer"):
            tokenizer = tokenizer_from_dict(meta["tokenizer"])
        else:
            tokenizer = load_tokenizer(data.tokenizer)
    except (ValueError, OSError) as err:
        raise ConfigError(f"calibration tokenizer: {err}") from None
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(f"calibration tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                          f"{vocab_size}; set data.tokenizer to the model's tokenizer")
    if isinstance(tokenizer, ByteTokenizer) and vocab_size > 4 * tokenizer.vocab_size:
        log.warning("calibrating a %d-token model with the byte tokenizer: the checkpoint holds no tokenizer; import "
                    "it from a directory with tokenizer.json, or set --config.data.tokenizer", vocab_size)
    return data, tokenizer

"""The input pipeline: sources -> seeded shuffle -> shard by process -> tokenize -> mix and pack -> batch.

Built from grain objects (MapDataset.source/shuffle/repeat/slice/map, an IterDataset for packing, `.batch`),
so the iterator supports `get_state()` / `set_state()`; the state is a small JSON-serialisable dict and
restoring it continues with bitwise-identical batches.

Batches are dicts of numpy arrays of shape [per_process_batch, seq_len]:
    inputs int32, targets int32 (inputs shifted by one), loss_mask float32 (1 where the target is trained),
    segment_ids int32 (1, 2, ... per packed piece in a row, 0 for padding), positions int32 (within piece).
segment_ids is present when data.document_aware (the default): the training steps then pass it to the model, so
no token sees another document of its row, as in evaluation, where each problem runs alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import grain
import jax
import numpy as np

from elastic_jax.data.config import DataConfig
from elastic_jax.data.packing import PackedMixtureIterDataset
from elastic_jax.data.reasoning import ReasoningExample, ReasoningSource, ReasoningTaskConfig, encode_example
from elastic_jax.data.records import record_dataset
from elastic_jax.data.text import TextSource
from elastic_jax.data.tokenizer import Tokenizer, load_tokenizer

EVAL_SEED = 0
REASONING_BLOCK = 64  # reasoning examples per grain element


def _seed32(*parts: Any) -> int:
    """A stable 32-bit seed derived from `parts` (grain shuffles take seeds in [0, 2**32))."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def resolve_process(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    """(process_index, process_count), taken from JAX for any that is None, and checked."""
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not (isinstance(process_count, int) and process_count >= 1):
        raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
    if not (isinstance(process_index, int) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    return process_index, process_count


def check_shapes(seq_len: int, global_batch: int, process_count: int, max_seq_len: int | None = None) -> int:
    """Validate sequence length and batch size; returns the per-process batch size."""
    if not (isinstance(seq_len, int) and seq_len > 0):
        raise ValueError(f"train.seq_len: must be a positive integer, got {seq_len!r}")
    if max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(f"train.seq_len: {seq_len} exceeds the model's maximum sequence length {max_seq_len}")
    if not (isinstance(global_batch, int) and global_batch > 0):
        raise ValueError(f"train.global_batch: must be a positive integer, got {global_batch!r}")
    if global_batch % process_count:
        raise ValueError(f"train.global_batch: {global_batch} is not divisible by the number of processes "
                         f"({process_count}); each process loads global_batch // process_count rows")
    return global_batch // process_count


def _encode_text(document: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokenizer.encode(document, add_bos=True, add_eos=True), dtype=np.int32)
    return tokens, np.ones_like(tokens)


class ReasoningBlockSource:
    """Random-access blocks of the reasoning task: block b holds examples [b * size, (b + 1) * size) of `split`.

    Reading examples in blocks amortises grain's per-element overhead; each example is still its own segment.
    """

    def __init__(self, cfg: ReasoningTaskConfig, split: str = "train", block_size: int = REASONING_BLOCK):
        self.source = ReasoningSource(cfg, split)
        self.block_size = int(block_size)

    def __len__(self) -> int:
        return len(self.source) // self.block_size

    def __getitem__(self, block: int) -> list[ReasoningExample]:
        first = int(block) % len(self) * self.block_size
        return [self.source[first + j] for j in range(self.block_size)]


def _encode_reasoning_block(examples: list[ReasoningExample],
                            tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    encoded = [encode_example(example, tokenizer) for example in examples]
    lengths = np.array([len(tokens) for tokens, _ in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return (np.concatenate([t for t, _ in encoded]), np.concatenate([m for _, m in encoded]), starts)


def build_sources(data_cfg: DataConfig, tokenizer: Tokenizer, seed: int, split: str = "train",
                  process_index: int = 0, process_count: int = 1) -> list[tuple[str, grain.MapDataset, float, bool]]:
    """The per-source grain MapDatasets of one process: (name, dataset, weight, atomic) for each used source.

    Each dataset is source -> shuffle(seed) -> repeat -> slice[process_index::process_count] -> tokenize, so
    the processes read disjoint interleaved positions of one global stream (reasoning elements are blocks of
    REASONING_BLOCK examples, text elements single documents). Sources with weight 0 (and an
    empty text eval split) are left out.
    """
    out: list[tuple[str, grain.MapDataset, float, bool]] = []
    if data_cfg.reasoning_weight > 0:
        _ = (tokenizer.think_id, tokenizer.end_think_id)  # fail early if the vocabulary lacks them
        ds = (grain.MapDataset.source(ReasoningBlockSource(data_cfg.reasoning, split))
              .shuffle(seed=_seed32(seed, "reasoning"))
              .repeat()[process_index::process_count]
              .map(functools.partial(_encode_reasoning_block, tokenizer=tokenizer)))
        out.append(("reasoning", ds, float(data_cfg.reasoning_weight), True))
    if data_cfg.text_weight > 0:
        text = TextSource(data_cfg.text_paths, data_cfg.text_extensions, data_cfg.text_max_files, split=split,
                          eval_fraction=data_cfg.text_eval_fraction)
        if len(text) > 0:
            ds = (grain.MapDataset.source(text)
                  .shuffle(seed=_seed32(seed, "text"))
                  .repeat()[process_index::process_count]
                  .map(functools.partial(_encode_text, tokenizer=tokenizer)))
            out.append(("text", ds, float(data_cfg.text_weight), False))
        elif split == "train":
            raise ValueError("data.text_paths: the text corpus has no training files")
    if data_cfg.record_weight > 0:  # your own JSONL / Parquet / ArrayRecord records (data/records.py)
        ds = record_dataset(data_cfg, tokenizer, _seed32(seed, "records"), split, process_index, process_count)
        if ds is not None:
            out.append(("records", ds, float(data_cfg.record_weight), bool(data_cfg.record_keep_whole)))
        elif split == "train":
            raise ValueError("data.record_paths: the records have no training records")
    if not out:
        raise ValueError(f"data.text_eval_fraction: the {split} split is empty: data.reasoning_weight is 0 and no "
                         "text file is held out (too few files for the fraction)")
    return out


def _fingerprint(data_cfg: DataConfig, tokenizer: Tokenizer, seq_len: int, seed: int, split: str,
                 process_index: int, process_count: int) -> dict[str, Any]:
    """What the packed stream depends on; stored in iterator states and checked when restoring."""
    cfg = dataclasses.replace(data_cfg, num_workers=0).to_dict()
    cfg.pop("document_aware", None)  # it changes no token of the stream (and states saved before it still load)
    if not data_cfg.record_weight:  # unused record fields change nothing (and states saved before them still load)
        for key in [k for k in cfg if k.startswith("record_")] + ["chat_template"]:
            cfg.pop(key, None)
    tok = tokenizer.to_dict()
    tok_key = hashlib.blake2b(json.dumps(tok, sort_keys=True).encode(), digest_size=8).hexdigest()
    cfg_key = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode(), digest_size=8).hexdigest()
    return {"seq_len": seq_len, "seed": seed, "split": split, "process_index": process_index,
            "process_count": process_count, "data_config": cfg_key, "tokenizer": f"{tok['kind']}:{tok_key}"}


def make_dataset(data_cfg: DataConfig, tokenizer: Tokenizer | None, seq_len: int, global_batch: int, seed: int,
                 process_index: int | None = None, process_count: int | None = None, *, split: str = "train",
                 max_seq_len: int | None = None) -> grain.IterDataset:
    """The batched grain IterDataset behind `make_train_iterator` (infinite)."""
    data_cfg.validate()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg.tokenizer)
    process_index, process_count = resolve_process(process_index, process_count)
    batch = check_shapes(seq_len, global_batch, process_count, max_seq_len)
    if split == "train":
        seed = data_cfg.shuffle_seed if data_cfg.shuffle_seed is not None else seed
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sources = build_sources(data_cfg, tokenizer, seed, split, process_index, process_count)
    names, datasets, weights, atomic = (list(x) for x in zip(*sources, strict=True))
    packed = PackedMixtureIterDataset(
        datasets, weights, seq_len, tokenizer.pad_id, names=names, atomic=atomic,
        fingerprint=_fingerprint(data_cfg, tokenizer, seq_len, seed, split, process_index, process_count),
        document_aware=data_cfg.document_aware)
    ds = packed.batch(batch)
    if data_cfg.num_workers > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_cfg.num_workers)
    return ds


def make_train_iterator(data_cfg: DataConfig, tokenizer: Tokenizer | None, seq_len: int, global_batch: int,
                        seed: int, process_index: int | None = None, process_count: int | None = None, *,
                        max_seq_len: int | None = None) -> grain.DatasetIterator:
    """An infinite iterator of this process's training batches, with exact `get_state()` / `set_state()`.

    The data order is seeded by `data_cfg.shuffle_seed`, or by `seed` when that is None. `tokenizer=None`
    loads `data_cfg.tokenizer`. `max_seq_len` (the model's limit), when given, is checked against seq_len.
    """
    return iter(make_dataset(data_cfg, tokenizer, seq_len, global_batch, seed, process_index, process_count,
                             split="train", max_seq_len=max_seq_len))


def make_eval_batches(data_cfg: DataConfig, tokenizer: Tokenizer | None, seq_len: int, global_batch: int,
                      num_batches: int, process_index: int | None = None, process_count: int | None = None, *,
                      max_seq_len: int | None = None) -> list[dict[str, np.ndarray]]:
    """`num_batches` held-out batches (eval splits of both sources), identical for every run and seed."""
    if not (isinstance(num_batches, int) and num_batches > 0):
        raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    ds = make_dataset(data_cfg.replace(num_workers=0), tokenizer, seq_len, global_batch, EVAL_SEED,
                      process_index, process_count, split="eval", max_seq_len=max_seq_len)
    iterator = iter(ds)
    return [next(iterator) for _ in range(num_batches)]

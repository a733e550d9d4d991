"""Data layer: tokenizers, the synthetic reasoning task, local text corpora, and the packed grain pipeline."""

from elastic_jax.data.config import DataConfig, validate
from elastic_jax.data.packing import PackedMixtureIterator, PackedMixtureIterDataset, rows_to_batch
from elastic_jax.data.pipeline import (
    build_sources,
    check_shapes,
    make_dataset,
    make_eval_batches,
    make_train_iterator,
    resolve_process,
)
from elastic_jax.data.reasoning import (
    PRESETS,
    ReasoningExample,
    ReasoningSource,
    ReasoningTaskConfig,
    encode_example,
    encode_prompt,
    eval_prompts,
    evaluate_prompt,
    make_example,
    score_answer,
    split_of,
)
from elastic_jax.data.text import TextSource, list_files, split_files, stdlib_root
from elastic_jax.data.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "PRESETS",
    "ByteTokenizer",
    "DataConfig",
    "HFTokenizer",
    "PackedMixtureIterDataset",
    "PackedMixtureIterator",
    "ReasoningExample",
    "ReasoningSource",
    "ReasoningTaskConfig",
    "TextSource",
    "Tokenizer",
    "build_sources",
    "check_shapes",
    "encode_example",
    "encode_prompt",
    "eval_prompts",
    "evaluate_prompt",
    "list_files",
    "load_tokenizer",
    "make_dataset",
    "make_eval_batches",
    "make_example",
    "make_train_iterator",
    "resolve_process",
    "rows_to_batch",
    "score_answer",
    "split_files",
    "split_of",
    "stdlib_root",
    "tokenizer_from_dict",
    "validate",
]

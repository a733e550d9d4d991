"""Shared fixtures of the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<s>", "</s>", "<think>", "</think>"]
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "((7+5)*3)-4=<think>7+5=12;12*3=36;36-4=32</think>32",
    "import numpy as np\nx = np.zeros(3)\n",
]


def build_bpe(path: Path, specials: list[str] = SPECIALS) -> Path:
    """Train a tiny byte-level BPE tokenizer and save it as `path` (a tokenizer.json)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def make_bpe():
    """The `build_bpe` helper, for tests that need tokenizers with other special tokens."""
    return build_bpe


@pytest.fixture(scope="session")
def bpe_json(tmp_path_factory) -> Path:
    return build_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json")


@pytest.fixture()
def z_corpus(tmp_path) -> Path:
    """A text corpus whose documents are only the letter z (easy to tell apart from reasoning tokens)."""
    root = tmp_path / "zdocs"
    root.mkdir()
    for i in range(24):
        (root / f"doc{i:02d}.txt").write_text("z" * (200 + 37 * i))
    return root

"""Plain-text documents from local files, listed deterministically and read lazily by index.

With no paths the corpus is the Python standard library's own source: always present, a few MB of real
text, and identical on every machine with the same Python version, which makes smoke runs reproducible.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

DEFAULT_EXTENSIONS = (".py", ".txt", ".md")
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
SPLITS = (None, "train", "eval")


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _matches(name: str, extensions: Sequence[str]) -> bool:
    return any(name.endswith(ext) for ext in extensions)


def _walk(root: Path, extensions: Sequence[str], excluded_dirs: frozenset[str]) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded_dirs and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _matches(f, extensions))
    return found


def _relative_keys(files: Sequence[Path]) -> dict[Path, str]:
    """Each file's path relative to the files' common directory, so the split does not depend on where the
    corpus lives on disk."""
    if not files:
        return {}
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return {f: f.relative_to(root).as_posix() for f in files}


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def list_files(paths_or_dirs: Sequence[str | os.PathLike] = (), extensions: Sequence[str] = DEFAULT_EXTENSIONS,
               max_files: int | None = None) -> list[Path]:
    """Sorted, de-duplicated files under `paths_or_dirs` (the stdlib's *.py files when empty).

    Raises FileNotFoundError for a missing path and ValueError when nothing matches; both name
    `data.text_paths`.
    """
    extensions = tuple(extensions)
    if not extensions:
        raise ValueError("data.text_extensions: must name at least one file extension")
    if not paths_or_dirs:
        files = _walk(stdlib_root(), (".py",), STDLIB_EXCLUDED_DIRS)
        where = f"the standard library at {stdlib_root()}"
    else:
        files = []
        for entry in paths_or_dirs:
            path = Path(os.path.expanduser(os.fspath(entry)))
            if not path.exists():
                raise FileNotFoundError(f"data.text_paths: {entry} does not exist")
            if path.is_dir():
                files.extend(_walk(path, extensions, frozenset({"__pycache__"})))
            else:
                files.append(path)  # an explicitly named file is used whatever its extension
        where = f"{[str(p) for p in paths_or_dirs]} with extensions {list(extensions)}"
    files = sorted(set(files))
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise ValueError(f"data.text_paths: no matching files in {where}")
    return files


def split_files(files: Sequence[Path], split: str | None, eval_fraction: float) -> list[Path]:
    """The files of `split`: "eval" is the floor(n * eval_fraction) files of lowest path hash, "train" the rest.

    Disjoint by construction, and the train part is never empty for eval_fraction < 1.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split is None:
        return list(files)
    num_eval = math.floor(len(files) * eval_fraction)
    keys = _relative_keys(files)
    eval_set = set(sorted(files, key=lambda p: (_key_hash(keys[p]), keys[p]))[:num_eval])
    return [f for f in files if (f in eval_set) == (split == "eval")]


class TextSource:
    """Random-access documents (one per file, as str) for grain: `source[i]` reads file i on demand."""

    def __init__(self, paths_or_dirs: Sequence[str | os.PathLike] = (),
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS, max_files: int | None = None,
                 split: str | None = None, eval_fraction: float = 0.0):
        if max_files is not None and max_files <= 0:
            raise ValueError(f"data.text_max_files: must be positive or None, got {max_files}")
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"data.text_eval_fraction: must be in [0, 1), got {eval_fraction}")
        self.split = split
        self.files = split_files(list_files(paths_or_dirs, extensions, max_files), split, eval_fraction)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> str:
        if not self.files:
            raise IndexError(f"the {self.split} split of this text corpus is empty")
        path = self.files[int(index) % len(self.files)]
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"TextSource({len(self.files)} files, split={self.split!r})"

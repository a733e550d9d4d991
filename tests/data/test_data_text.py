"""Text sources over local files and the standard-library default corpus."""

from __future__ import annotations

import shutil

import pytest

from elastic_jax.data import TextSource, list_files, split_files, stdlib_root


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    for name, text in [("b.txt", "bee"), ("a.py", "print(1)\n"), ("c.md", "# c"), ("d.bin", "x"),
                       ("sub/e.py", "e = 5"), ("__pycache__/x.py", "cached"), ("bad.txt", None)]:
        path = root / name
        if text is None:
            path.write_bytes(b"ok \xff\xfe")  # not valid UTF-8
        else:
            path.write_text(text)
    return root


def test_lists_sorted_matching_files_and_reads_lazily(tree):
    src = TextSource([tree])
    assert [p.relative_to(tree).as_posix() for p in src.files] == ["a.py", "b.txt", "bad.txt", "c.md", "sub/e.py"]
    assert len(src) == 5
    assert src[0] == "print(1)\n" and src[4] == "e = 5"
    assert src[2] == "ok \ufffd\ufffd"
    assert list(src)[1] == "bee"
    only_py = TextSource([tree], extensions=(".py",))
    assert [p.name for p in only_py.files] == ["a.py", "e.py"]
    # An explicitly named file is used whatever its extension; duplicates collapse.
    assert [p.name for p in TextSource([tree / "d.bin", tree / "d.bin"]).files] == ["d.bin"]
    assert len(TextSource([tree], max_files=2)) == 2


def test_missing_or_empty_paths_name_the_field(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.text_paths: .*does not exist"):
        TextSource([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"data\.text_paths: no matching files"):
        TextSource([empty])
    with pytest.raises(ValueError, match=r"data\.text_extensions"):
        list_files([tree], extensions=())


def test_stdlib_default_corpus():
    src = TextSource(max_files=50)
    assert len(src) == 50
    assert src.files == TextSource(max_files=50).files
    full = TextSource()
    assert len(full) > 100
    root = stdlib_root()
    for path in full.files:
        parts = path.relative_to(root).parts
        assert path.suffix == ".py"
        assert not {"test", "tests", "site-packages", "__pycache__"} & set(parts[:-1])
    assert any("import " in src[i] for i in range(len(src)))


def test_train_eval_file_split(tree, tmp_path):
    files = list_files([tree])
    for fraction in (0.0, 0.2, 0.5, 0.9):
        train, evals = split_files(files, "train", fraction), split_files(files, "eval", fraction)
        assert set(train).isdisjoint(evals) and sorted(train + evals) == files
        assert len(evals) == int(len(files) * fraction) and train
    # The split depends on paths relative to the corpus, not on where the corpus lives.
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(tree, moved)
    rel = lambda ps, root: [p.relative_to(root).as_posix() for p in ps]  # noqa: E731
    assert rel(TextSource([moved], split="eval", eval_fraction=0.5).files, moved) == rel(
        TextSource([tree], split="eval", eval_fraction=0.5).files, tree)
    with pytest.raises(ValueError, match="split"):
        split_files(files, "test", 0.1)
    with pytest.raises(ValueError, match=r"data\.text_eval_fraction"):
        TextSource([tree], eval_fraction=1.0)

"""The docs agree with the data and the tree: rendered figures and layout are current, every relative link resolves."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import render_docs  # noqa: E402
import render_tables  # noqa: E402
import timing  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.M)


# ---- rendered blocks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_rendered_blocks_are_current(page):
    text = page.read_text()
    assert render_docs.render(text, render_docs.load_results()) == text, (
        f"{page.relative_to(ROOT)} differs from its results files or the source tree (a benchmark's --out, a new "
        f"or moved file, a changed docstring); regenerate it with `{render_docs.COMMAND}`")


def test_the_readme_and_the_architecture_page_carry_their_blocks():
    readme, arch = (ROOT / "README.md").read_text(), (ROOT / "docs" / "architecture.md").read_text()
    for name in ("speed", "quickstart"):
        assert f"<!-- figures:{name} -->" in readme
    assert "<!-- layout:package -->" in arch
    for match in render_docs.BLOCK.finditer("".join(p.read_text() for p in PAGES)):
        assert match.group(3) in render_docs.BLOCKS


def test_a_changed_figure_changes_the_readme():
    results = render_docs.load_results()
    entry = results["train_step"]["train step on 2 CPUs"]
    entry["figures"] = {**entry["figures"], "ours": 123456}
    rendered = render_docs.render((ROOT / "README.md").read_text(), results)
    assert "123,456 tok/s" in rendered


def test_every_results_entry_says_how_it_was_measured():
    for path in sorted(render_docs.RESULTS.glob("*.json")):
        for name, entry in json.loads(path.read_text()).items():
            missing = {"command", "date", "machine", "load", "repeats", "spread", "commit", "figures"} - set(entry)
            assert not missing, f"{path.name}: {name!r} lacks {sorted(missing)}"
            assert " on " in name, f"{path.name}: {name!r} does not name its machine"


def test_layout_lists_every_module_with_its_docstring():
    layout = render_tables.layout(ROOT)
    for path in (ROOT / "elastic_jax").rglob("*.py"):
        if path.name != "__init__.py" and "__pycache__" not in path.parts:
            assert f" {path.name} " in layout or layout.count(f"{path.name}\n"), path
    assert "reference.py" in layout and "docs/reference.md" in layout


def test_first_sentence_cuts_long_docstrings_at_a_clause():
    assert render_tables.first_sentence("One thing. Another.") == "One thing"
    assert render_tables.first_sentence("Starts over `gcloud ... ssh`. Then") == "Starts over `gcloud ... ssh`"
    long = "Word " * 10 + "(a long aside that goes on and on and on), and then a clause that runs far past the limit"
    cut = render_tables.first_sentence(long)
    assert cut.endswith(" ...") and len(cut) <= 114


# ---- benchmark results files ------------------------------------------------------------------------------------
def test_save_entries_records_how_and_where(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"kept": {"figures": {}}}))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "train_step.py"), "--batch", "8", "--out", str(out)])
    for name in [k for k in os.environ if k.startswith(("ELASTIC_JAX_", "XLA_FLAGS"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ELASTIC_JAX_CPU_KERNELS", "0")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    timing.save_entries(str(out), {"train step on 2 CPUs": {"ratio": 1.5, "spread": "1.4, 1.5x"}}, "5 calls",
                        [{"load": [0.5, 1.25]}, {"load": [0.75, 0.5]}])
    data = json.loads(out.read_text())
    entry = data["train step on 2 CPUs"]
    assert "kept" in data
    assert entry["command"] == "ELASTIC_JAX_CPU_KERNELS=0 JAX_PLATFORMS=cpu python benchmarks/train_step.py --batch 8"
    assert entry["load"] == "0.50-1.25" and entry["spread"] == "1.4, 1.5x" and entry["figures"] == {"ratio": 1.5}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", entry["date"]) and entry["commit"] and entry["machine"]


def test_entry_names_hold_the_machine_and_the_changed_arguments(monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-hf", action="store_true")
    timing.add_out_arguments(parser)
    monkeypatch.delenv("ELASTIC_JAX_CPU_KERNELS", raising=False)
    args = parser.parse_args(["--batch", "8", "--repeats", "9", "--no-hf", "--out", "x.json"])
    assert timing.entry_name("train step", parser, args) == f"train step on {timing.machine_tag()} --batch 8 --no-hf"
    args = parser.parse_args(["--entry", "mine"])
    assert timing.entry_name("train step", parser, args) == "train step mine"
    assert timing._without_out(["--out", "a.json", "--batch", "8", "--entry=e"]) == ["--batch", "8"]


TIMING_BENCHMARKS = ("forward_vs_transformers", "decode", "decode_llamacpp", "train_step", "elastic_step", "ssd",
                     "speculative", "serve_load")


@pytest.mark.parametrize("name", TIMING_BENCHMARKS)
def test_timing_benchmarks_store_results_and_print_the_load(name):
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert "add_out_arguments(" in source, f"benchmarks/{name}.py takes no --out"
    assert "load_text()" in source, f"benchmarks/{name}.py prints no load average beside its figures"
    assert (render_docs.RESULTS / f"{name}.json").exists(), f"no benchmarks/results/{name}.json"


# ---- links ------------------------------------------------------------------------------------------------------
def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = FENCE.sub("", page.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = github_anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))  # links in code are not links
    return [a or b for a, b in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", a or b)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            where = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target.name
            broken.append(f"{link} (no heading with that anchor in {where})")
    return broken


def test_anchors_follow_githubs_rules(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Against llama.cpp at batch 1\n## Memory: the parent once\n## `ssd` and **bold**\n"
                    "## Notes\n## Notes\n```\n# not a heading\n```\n")
    assert anchors(page) == {"against-llamacpp-at-batch-1", "memory-the-parent-once", "ssd-and-bold", "notes",
                             "notes-1"}
    page.write_text("[a](p.md#notes) [b](#nowhere) [c](missing.md) `[d](skipped.md)` [e](https://x.org/y)\n# Notes\n")
    assert broken_links(page) == ["#nowhere (no heading with that anchor in p.md)", "missing.md (no such file)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == [], f"broken links in {page.relative_to(ROOT)}"

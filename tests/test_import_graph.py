"""The package's import graph: no circles, and every import points down the layers of docs/architecture.md.

The layer table lives only in docs/architecture.md ("## Layers"); this test reads it. Every `import` and
`from ... import` of one package module by another counts: module-level ones for circles, and function-level ones
too for the layers (an import deferred into a function still depends on what it imports).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "elastic_jax"
DOC = ROOT / "docs" / "architecture.md"


def read_layers(text: str) -> list[tuple[str, list[str]]]:
    """[(layer name, its modules)] from the table under "## Layers", top layer first. A module name is relative to
    the package (`train` covers elastic_jax/train/ and everything in it); `__init__` is the package's own file."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "`" in line]
    return [(row.split("|")[1].strip(), re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in rows]


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` refers to (a module, or the module defining an imported name)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """[(imported package module, line, module-level)] of one file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name, modules) if name.split(".")[0] == "elastic_jax" else None
            if target and target != module:
                found.add((target, node.lineno, id(node) not in in_function))
    return sorted(found)


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int:
    """The index (0 = top) of the layer holding `module`: the longest listed name it is, or is inside."""
    best, index = "", None
    for i, (_, names) in enumerate(table):
        for name in names:
            full = "elastic_jax" if name == "__init__" else f"elastic_jax.{name}"
            inside = name != "__init__" and module.startswith(full + ".")  # the package's file covers only itself
            if (module == full or inside) and len(full) > len(best):
                best, index = full, i
    if index is None:
        raise AssertionError(f"{module} is in no layer of {DOC.name}'s table: add it to one")
    return index


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan)."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = module_names()
    return {m: imports(m, p, modules) for m, p in modules.items()}


def test_no_import_circles(graph):
    # the package's own __init__ is left out, as importing any submodule runs it first
    edges = {m: {t for t, _, top in found if top and t != "elastic_jax"} for m, found in graph.items()}
    found = circles(edges)
    assert not found, "import circles: " + "; ".join(" <-> ".join(g) for g in found)


def test_imports_point_down_the_documented_layers(graph):
    table = read_layers(DOC.read_text())
    paths = module_names()
    upward = []
    for module, found in sorted(graph.items()):
        mine = layer_of(module, table)
        for target, line, _ in found:
            if target == "elastic_jax":  # the package's __init__ runs first anyway; `from elastic_jax import x` names x
                continue
            theirs = layer_of(target, table)
            if theirs < mine:
                path = paths[module].relative_to(ROOT)
                upward.append(f"{path}:{line} imports {target} ({table[theirs][0]}, above {table[mine][0]})")
    assert not upward, "imports that point up the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_the_checks_catch_what_they_name():
    """A circle and an upward import, made up here, are both reported (the checks above can fail)."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    table = read_layers("x\n## Layers\n| layer | modules |\n|---|---|\n| top | `cli` `__init__` |\n"
                        "| low | `model` `config` |\n")
    assert [name for name, _ in table] == ["top", "low"]
    assert layer_of("elastic_jax.model.moe", table) > layer_of("elastic_jax.cli", table)
    assert layer_of("elastic_jax", table) == 0
    for unlisted in ("elastic_jax.train.loop", "elastic_jax.cli_models"):
        with pytest.raises(AssertionError, match="in no layer"):
            layer_of(unlisted, table)

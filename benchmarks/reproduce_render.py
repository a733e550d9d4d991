"""The Markdown of "Is nesting worth it?", every number rendered from results.json: docs/results.md's nesting part,
docs/training.md's defaults table and the README paragraph, each between marker comments.

    python benchmarks/reproduce_render.py            # rewrite the marked parts from docs/reproduce_results.json
    python benchmarks/reproduce_render.py --check    # exit 1 when a marked part differs from its rendering
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from reproduce_text import curve_lines, headline_lines, parent_lines, settings_lines, what_lines

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "reproduce_results.json"
# (file, marker name): the parts this script owns
PARTS = (("docs/results.md", "reproduce"), ("docs/training.md", "reproduce-defaults"),
         ("README.md", "reproduce-readme"))


def results_markdown(s: dict[str, Any]) -> str:
    """docs/results.md's nesting part (and a work directory's results.md)."""
    lines = what_lines(s) + parent_lines(s) + settings_lines(s) + curve_lines(s) + headline_lines(s)
    lines += ["![eval loss against tokens](reproduce_loss_vs_tokens.png) "
              "![accuracy against tokens](reproduce_accuracy_vs_tokens.png)", ""]
    if s["missing"]:
        lines += [f"Missing (not finished): {', '.join(s['missing'])}.", ""]
    return "\n".join(lines)


def defaults_markdown(s: dict[str, Any]) -> str:
    """docs/training.md's table of the settings measured at E and the choice."""
    return "\n".join(settings_lines(s, heading=False))


def readme_markdown(s: dict[str, Any]) -> str:
    """The README's paragraph quoting the experiment."""
    from reproduce_text import readme_paragraph

    return readme_paragraph(s)


RENDERERS = {"reproduce": results_markdown, "reproduce-defaults": defaults_markdown,
             "reproduce-readme": readme_markdown}


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- {name}:begin (rendered by benchmarks/reproduce_render.py from docs/reproduce_results.json; "
            "do not edit) -->", f"<!-- {name}:end -->")


def replace_part(text: str, name: str, body: str) -> str:
    """`text` with the part between `name`'s markers replaced by `body`; ValueError when the markers are missing."""
    begin, end = markers(name)
    if begin not in text or end not in text:
        raise ValueError(f"no {name} markers ({begin!r} ... {end!r})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def render(summary: dict[str, Any], root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """{file: (current text, rendered text)} for every file that has its markers."""
    out = {}
    for rel, name in PARTS:
        path = root / rel
        text = path.read_text() if path.exists() else ""
        if markers(name)[0] in text:
            out[path] = (text, replace_part(text, name, RENDERERS[name](summary)))
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    summary = json.loads(args.results.read_text())
    differs = []
    for path, (now, rendered) in render(summary).items():
        if now != rendered:
            differs.append(str(path))
            if not args.check:
                path.write_text(rendered)
    print(("differs from its rendering: " if args.check else "rewrote: ") + (", ".join(differs) or "nothing"))
    return 1 if args.check and differs else 0


def binomial(p: float, n: int) -> float:
    """The standard error of one model's accuracy p on n problems."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


if __name__ == "__main__":
    sys.exit(main())

"""Render the measured figures and the package layout into README.md and docs/*.md, so the docs cannot drift.

    python benchmarks/render_docs.py            # rewrite every marked block from the results and the tree
    python benchmarks/render_docs.py --check    # list the stale blocks and exit 1 (tests/test_docs.py does this)
    python benchmarks/render_docs.py --quickstart-run quickstart --seconds 190   # store a quickstart run's table

A block is `<!-- figures:NAME -->` ... `<!-- /figures -->` (or `layout:NAME` ... `/layout`); NAME picks its
renderer in BLOCKS. Figures come from benchmarks/results/*.json, which the timing benchmarks update with
`--out benchmarks/results/<benchmark>.json` (each entry keeps its command, date, machine, load, repeats, spread
and commit); the layout comes from each file's docstring or leading comment.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import render_tables as tables
import serve_load_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/render_docs.py"
PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- (figures|layout):([\w-]+) -->\n)(.*?)(<!-- /\2 -->)", re.S)


def load_results() -> dict[str, dict]:
    """Every results file, by its name without .json."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


BLOCKS = {
    "speed": tables.speed_table,
    "quickstart": tables.quickstart_block,
    "ssd-cpu": tables.ssd_cpu,
    "ssd-gpu": tables.ssd_gpu,
    "train-gpu": tables.train_gpu,
    "elastic-step": tables.elastic_step,
    "decode-budgets": tables.decode_budgets,
    "decode-llamacpp": tables.decode_llamacpp,
    "serve-load": serve_load_table.serve_load,
    "package": lambda _: tables.layout(ROOT),
}


def pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in ROOT.glob(pattern)})


def render(text: str, results: dict[str, dict]) -> str:
    """`text` with every marked block replaced by what its renderer makes now."""
    def one(match: re.Match) -> str:
        name = match.group(3)
        if name not in BLOCKS:
            raise SystemExit(f"unknown block {match.group(2)}:{name} (known: {', '.join(BLOCKS)})")
        return f"{match.group(1)}{BLOCKS[name](results).rstrip()}\n{match.group(5)}"
    return BLOCK.sub(one, text)


def stale_pages(results: dict[str, dict] | None = None) -> list[str]:
    """The pages whose marked blocks differ from a fresh rendering."""
    results = load_results() if results is None else results
    return [str(p.relative_to(ROOT)) for p in pages() if render(p.read_text(), results) != p.read_text()]


def import_quickstart(run: Path, seconds: float | None) -> None:
    """Store a quickstart run's table (`<workdir>/budgets.json`) as the quickstart entry the README shows."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing  # noqa: E402  (the benchmarks' metadata helpers)

    from elastic_jax.config import ModelConfig
    from elastic_jax.elastic.search import nests_in
    from elastic_jax.elastic.spec import ElasticSpec
    from elastic_jax.model_io import model_config_of, read_metadata

    rows = json.loads((run / "budgets.json").read_text())
    checkpoint = run / "elastic" / "checkpoints"
    cfg: ModelConfig = model_config_of(checkpoint, read_metadata(checkpoint))
    specs = {row["budget"]: ElasticSpec.from_dict(row.pop("spec")) for row in rows}
    for row in rows:
        row.pop("export", None)
        larger = [b for b in specs if b > row["budget"]]
        nxt = min(larger) if larger else None
        ok = nxt is not None and nests_in(specs[row["budget"]], specs[nxt], cfg)
        row["nests"] = "-" if nxt is None else f"{'yes' if ok else 'NO'} {nxt:g}"
    figures = {"rows": rows, "seconds": seconds}
    timing.save_entries(str(RESULTS / "quickstart.json"), {f"quickstart on {timing.machine_tag()}": figures},
                        "the quickstart's default steps", [], command="elastic-jax quickstart")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page's blocks are stale; write nothing")
    parser.add_argument("--quickstart-run", type=Path, help="a quickstart workdir whose table to store first")
    parser.add_argument("--seconds", type=float, help="the quickstart run's wall time ('[4/4] done in N s')")
    args = parser.parse_args()
    if args.quickstart_run:
        import_quickstart(args.quickstart_run, args.seconds)
    results = load_results()
    if args.check:
        stale = stale_pages(results)
        if stale:
            sys.exit(f"stale: {', '.join(stale)}; regenerate with `{COMMAND}`")
        return
    for page in pages():
        text = page.read_text()
        new = render(text, results)
        if new != text:
            page.write_text(new)
            print(f"rendered {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""The blocks benchmarks/render_docs.py writes into the docs: tables of measured figures and the package layout."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

Results = dict[str, dict]


# ---- formatting -------------------------------------------------------------------------------------------------
def entry(results: Results, file: str, name: str) -> dict:
    try:
        return results[file][name]
    except KeyError:
        raise SystemExit(f"benchmarks/results/{file}.json has no entry {name!r}") from None


def sci(v: float | None) -> str:
    """4.1e4 -> '4.10e4' (how the SSD tables print throughput); None -> '-'."""
    if v is None:
        return "-"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def tok(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f} tok/s"


def load(e: dict) -> str:
    return f"load {e['load']}" if e["load"][:1].isdigit() or e["load"].startswith("not ") else e["load"]


def short_machine(name: str) -> str:
    """The machine part of an entry's name: 'train step on 2 CPUs --x' -> '2 CPU cores'."""
    where = name.split(" on ", 1)[1]
    cpus = re.match(r"(\d+) CPUs", where)
    return f"{cpus.group(1)} CPU cores" if cpus else "one " + where.split(" --")[0].split(" ELASTIC")[0].split()[1]


def measured(name: str, e: dict) -> str:
    return f"{short_machine(name)}, {e['date'][:10]}, {load(e)}"


def source(e: dict) -> str:
    """One line saying how an entry was measured."""
    spread = f"; {e['spread']}" if e["spread"] else ""
    return (f"`{e['command']}`: {e['date']}, {e['machine']}, {load(e)}, commit {e['commit']} "
            f"({e['repeats']}{spread}).")


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def ratio(f: dict, key: str = "ratio", per: str = "per_process") -> str:
    n = len(f.get(per, []))
    return f"{f[key]:.2f}x" + (f", median of {n} processes" if n > 1 else "")


# ---- README -----------------------------------------------------------------------------------------------------
CPU = "on 2 CPUs"
H100 = "on NVIDIA H100 80GB HBM3 --batch 8 --seq-len 1024 --torch-device cuda"


def speed_table(results: Results) -> str:
    rows = []

    def row(file: str, name: str, what: str, ours: str, peer: str, rate: str) -> None:
        e = entry(results, file, name)
        rows.append([what, ours, peer, rate, measured(name, e), f"`{e['command']}`"])

    for fig, what, digits in (("prefill", "prefill, `small` (50M), batch 4 x 512", 0),
                              ("decode", "cached decode, `small`, batch 1, 128 new tokens", 1)):
        f = entry(results, "forward_vs_transformers", f"{fig} {CPU}")["figures"]
        row("forward_vs_transformers", f"{fig} {CPU}", what, tok(f["ours"], digits),
            f"transformers {tok(f['peer'], digits)}", ratio(f))
    name = f"decode vs llama.cpp {CPU}"
    r = entry(results, "decode_llamacpp", name)["figures"]["rows"]
    row("decode_llamacpp", name, "decode vs llama.cpp (f32, 2 threads), `small` as `MEM*EMEM*EME` (58M), batch 1, "
        "budgets " + " / ".join(f"{x['budget']:.1f}" for x in r), " / ".join(f"{x['ours']:.1f}" for x in r) + " tok/s",
        "llama.cpp " + " / ".join(f"{x['peer']:.1f}" for x in r) + " tok/s",
        " / ".join(f"{x['ratio']:.2f}x" for x in r))
    name = f"decode per budget {CPU} --budgets 1.0,0.4 --batches 8 --new 16 --no-hf"
    f = entry(results, "decode", name)["figures"]
    s = f["speedups"][0]
    turns = {(t["batch"], t["budget"]): t["tok_s"] for t in f["in_turns"]}
    row("decode", name, f"decode per budget, `small` elastified over active parameters, batch {s['batch']}: budget "
        f"{s['budget']:g} vs {s['full']:g}", tok(turns[s["batch"], s["budget"]], 1),
        f"budget {s['full']:g}: {tok(turns[s['batch'], s['full']], 1)}",
        f"{s['speedup']:.2f}x (active-parameter ratio {s['active_ratio']:.2f}x)")
    for e_name, what, peer, key in ((f"ssd {CPU}", "SSD scan fwd+bwd, L = 8192 (H=8, P=64, N=64)", "sequential scan",
                                     "fb"),
                                    (f"ssd {CPU}", "SSD scan forward, L = 8192", "transformers' chunked torch scan",
                                     "fwd")):
        x = entry(results, "ssd", e_name)["figures"]["rows"]["8192"]
        other = x["ref_fb"] if key == "fb" else x["hf_fwd"]
        rate = x["fb_xla_over_ref"] if key == "fb" else x["fwd_xla_over_hf"]
        row("ssd", e_name, what, sci(x[f"xla_{key}"]) + " tok/s", f"{peer} {sci(other)} tok/s", f"{rate}x")
    f = entry(results, "train_step", f"train step {CPU}")["figures"]
    row("train_step", f"train step {CPU}", "training step, `small`, batch 4 x 256", tok(f["ours"]),
        f"transformers + AdamW {tok(f['peer'])}", ratio(f))
    for metric, suffix in (("total", ""), ("active", " --metric active_params")):
        name = f"elastic step {CPU}{suffix}"
        f = entry(results, "elastic_step", name)["figures"]
        row("elastic_step", name, f"elastic joint step, 3 budgets of {metric} params, static slices",
            f"{f['static_s']:.3f} s", f"mask mode {f['mask_s']:.3f} s / three single steps {f['singles_s']:.3f} s",
            f"{f['static_over_mask']:.2f}x / {f['static_over_singles']:.2f}x")
    for dtype, suffix in (("bf16 compute", " --dtype bfloat16"), ("fp32", "")):
        name = f"train step {H100}{suffix}"
        f = entry(results, "train_step", name)["figures"]
        row("train_step", name, f"training step on one H100, `small`, batch 8 x 1024, {dtype}", tok(f["ours"]),
            f"transformers {tok(f['peer'])}", ratio(f))
    return table(["what", "elastic_jax", "peer", "ratio", "where, when", "command"], rows)


NESTS_NOTE = ("nests in: whether every width on every axis is <= the next larger budget's (and its layers are "
              "among that budget's)")


def count(n: int) -> str:
    """246120 -> '246.12K', as the quickstart prints parameter counts."""
    return next((f"{n / scale:.2f}{unit}" for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)) if n >= scale),
                str(n))


def quickstart_row(r: dict) -> str:
    """One budget's line of the table `elastic-jax quickstart` prints (elastic_jax/quickstart.py's format_table;
    kept here so that the docs render without importing the package)."""
    acc = f"{r['zero_shot_accuracy']:5.1%} -> {r['accuracy']:5.1%}"
    return (f"{r['budget']:>6.2f} {count(r['total_params']):>9} {count(r['active_params']):>9} "
            f"{r['total_fraction']:>7.1%} {r['zero_shot_loss']:>9.4f} {r['loss']:>9.4f}  {acc:>17} "
            f"{r['tokens_per_s']:>10,.0f} {r['nests']:>8}")


def quickstart_block(results: Results) -> str:
    """The quickstart's table as it prints it, from the newest stored run."""
    name, e = max(results["quickstart"].items(), key=lambda item: item[1]["date"])
    rows = e["figures"]["rows"]
    head = (f"{'budget':>6} {'total':>9} {'active':>9} {'of full':>7} {'zero-shot':>9} {'elastic':>9}  "
            f"{'accuracy (0-shot -> elastic)':>17} {'tokens/s':>10} {'nests in':>8}")
    parent = f"parent eval loss {rows[0]['parent_loss']:.4f}; losses are next-token cross-entropy on held-out data"
    seconds = e["figures"]["seconds"]
    took = f", {seconds:.0f} s in all" if seconds else ""
    caption = (f"A run of `{e['command']}` ({e['repeats']}{took}) on {short_machine(name)}, {e['date'][:10]}, "
               f"{load(e)}, commit {e['commit']}:")
    block = [head, "-" * len(head), *map(quickstart_row, rows), parent, NESTS_NOTE]
    return caption + "\n\n```\n" + "\n".join(block) + "\n```"


# ---- docs/performance.md ----------------------------------------------------------------------------------------
def ssd_cpu(results: Results) -> str:
    out = []
    for name, chunk in ((f"ssd {CPU}", 128), (f"ssd {CPU} --chunk 64", 64)):
        e = entry(results, "ssd", name)
        rows = [[L, sci(x["xla_fwd"]), sci(x["ref_fwd"]), sci(x["hf_fwd"]), sci(x["xla_fb"]), sci(x["ref_fb"]),
                 f"{x['fwd_xla_over_ref']:.2f}", f"{x['fb_xla_over_ref']:.1f}", f"{x['fwd_xla_over_hf']:.2f}",
                 f"{x['xla_mem_mib']:.1f}", f"{x['ref_mem_mib']:.1f}"]
                for L, x in sorted(e["figures"]["rows"].items(), key=lambda item: int(item[0]))]
        out += [f"chunk_size = {chunk}: {source(e)}", "", table(
            ["L", "xla fwd", "ref fwd", "hf fwd", "xla f+b", "ref f+b", "fwd xla/ref", "f+b xla/ref", "fwd xla/hf",
             "xla mem (MiB)", "ref mem (MiB)"], rows), ""]
    return "\n".join(out)


def ssd_gpu(results: Results) -> str:
    gpu = "ssd on NVIDIA H100 80GB HBM3 --batch 4 --heads 32 --state 128"
    pallas, xla = entry(results, "ssd", f"{gpu} --impl pallas_gpu"), entry(results, "ssd", gpu)
    p, x = pallas["figures"]["rows"], xla["figures"]["rows"]
    rows = []
    for L in sorted({*p, *x}, key=int):
        a, b = p.get(L, {}), x.get(L, {})
        rows.append([L, sci(a.get("xla_fwd")), sci(b.get("xla_fwd")), a.get("ref_note") or sci(a.get("ref_fwd")),
                     sci(a.get("xla_fb")), sci(b.get("xla_fb")), sci(a.get("ref_fb"))])
    return "\n".join([f"- {source(pallas)}", f"- {source(xla)}", "", table(
        ["L", "pallas_gpu fwd", "xla fwd", "reference fwd", "pallas_gpu f+b", "xla f+b", "reference f+b"], rows)])


def train_gpu(results: Results) -> str:
    rows, lines = [], []
    for dtype, suffix in (("bfloat16 compute, fp32 master weights", " --dtype bfloat16"), ("float32", "")):
        e = entry(results, "train_step", f"train step {H100}{suffix}")
        f = e["figures"]
        rows.append([dtype, f"{tok(f['ours'])} ({f['ours_ms']:.0f} ms)", f"{tok(f['peer'])} ({f['peer_ms']:.0f} ms)",
                     f"{f['ratio']:.2f}x"])
        lines.append(f"- {source(e)}")
    return "\n".join([table(["dtype", "elastic_jax", "transformers", "ratio"], rows), "", *lines])


def elastic_step(results: Results) -> str:
    rows, lines = [], []
    for metric, suffix in (("total parameters", ""), ("active parameters", " --metric active_params")):
        e = entry(results, "elastic_step", f"elastic step {CPU}{suffix}")
        f = e["figures"]
        sizes = (" / ".join(f"{v:.1f}M" for v in f["total_m"]) + " total; "
                 + " / ".join(f"{v:.1f}M" for v in f["active_m"]) + " active")
        each = {key: ", ".join(f"{v:.2f}" for v in f[f"per_process_{key}"])
                for key in ("static_over_singles", "static_over_mask")}
        rows.append([f"{metric} ({sizes})", f"{f['mask_s']:.3f} s", f"{f['static_s']:.3f} s",
                     f"{f['singles_s']:.3f} s", f"**{f['static_over_singles']:.2f}** ({each['static_over_singles']})",
                     f"**{f['static_over_mask']:.2f}** ({each['static_over_mask']})"])
        lines.append(f"- {metric}: {source(e)}")
    return "\n".join([table(["budgets of", "mask mode", "static mode", "sum of singles",
                             "static / sum of singles (<= 1.15)", "static / mask (<= 0.80)"], rows), "", *lines])


# ---- docs/inference.md ------------------------------------------------------------------------------------------
def decode_budgets(results: Results) -> str:
    out = []
    for name, e in results["decode"].items():
        f = e["figures"]
        rows = [[f"{r['budget']:g} ({r['active']:.2f})", str(r["batch"]), tok(r["ours"], 1), tok(r["peer"], 1),
                 "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"] for r in f["rows"]]
        out += [f"**{short_machine(name)}**: {source(e)}", "",
                table(["budget (active share)", "batch", "ours", "transformers", "ratio"], rows), ""]
        for t in f["in_turns"]:
            out.append(f"- in turns, batch {t['batch']}: budget {t['budget']:g} {tok(t['tok_s'], 1)}")
        for s in f["speedups"]:
            out.append(f"- budget {s['budget']:g} vs {s['full']:g}, batch {s['batch']}: decode speed-up "
                       f"{s['speedup']:.2f}x; active-parameter ratio {s['active_ratio']:.2f}x; speed-up / ratio "
                       f"{s['speedup'] / s['active_ratio']:.2f} (target >= 0.6)")
        out.append("")
    return "\n".join(out)


def decode_llamacpp(results: Results) -> str:
    e = entry(results, "decode_llamacpp", f"decode vs llama.cpp {CPU}")
    f = e["figures"]
    rows = [[f"{r['budget']:.1f}", tok(r["ours"], 1), tok(r["peer"], 1), f"{r['ratio']:.2f}x",
             tok(r["ours_batch"], 1)] for r in f["rows"]]
    off = entry(results, "decode_llamacpp", f"decode vs llama.cpp {CPU} ELASTIC_JAX_CPU_KERNELS=0 --batch 0")
    o = off["figures"]["rows"]
    ours, peer = (" / ".join(f"{r[key]:.1f}" for r in o) for key in ("ours", "peer"))
    rates = " / ".join(f"{r['ratio']:.2f}x" for r in o)
    return "\n".join([
        f"With the CPU decode kernels: {source(e)}", "",
        table(["budget", "ours, batch 1", "llama.cpp, batch 1", "ratio", f"ours, batch {f['batch']}"], rows), "",
        f"With the kernels turned off: ours {ours} tok/s against llama.cpp's {peer} ({rates}); {source(off)}"])


# ---- docs/architecture.md: the layout, from the tree ------------------------------------------------------------
SKIP = {"__pycache__", "README.md"}
WIDTH = 32


def first_sentence(text: str, limit: int = 110) -> str:
    """The first sentence of `text`, cut at a clause boundary (then ' ...') when it is longer than `limit`."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.search(r"(?<!\.)\.(\s|$)", paragraph)  # not the end of an ellipsis
    sentence = (paragraph[: match.start()] if match else paragraph).rstrip(":")
    if len(sentence) <= limit:
        return sentence
    cut = max(sentence.rfind(mark, 0, limit) for mark in ("; ", ", ", " ("))
    cut = cut if cut > 20 else sentence.rfind(" ", 0, limit)
    return sentence[:cut] + " ..."


def describe(path: Path) -> str:
    """A file's first sentence: its module docstring, leading comment, or (a notebook) first markdown line."""
    if path.suffix == ".py":
        return first_sentence(ast.get_docstring(ast.parse(path.read_text())) or "")
    if path.suffix == ".ipynb":
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
        return first_sentence("".join(cells[0]["source"]).lstrip("# ")) if cells else ""
    comment = "//" if path.suffix == ".cc" else "#"
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#!")]
    head = []
    for line in lines:
        if not line.startswith(comment):
            break
        head.append(line[len(comment):].strip() or "\n\n")
    return first_sentence(" ".join(head).replace(" \n\n ", "\n\n"))


def _line(depth: int, name: str, text: str) -> str:
    label = "  " * depth + name
    return f"{label:<{WIDTH}} {text}".rstrip() if text else label


def _tree(directory: Path, depth: int) -> list[str]:
    lines = []
    for path in sorted(directory.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if path.name in SKIP or path.name.startswith(".") or path.suffix not in ("", ".py", ".cc", ".sh", ".sbatch",
                                                                               ".yaml", ".ipynb"):
            continue
        if path.is_dir() and not path.is_symlink():
            init, inner = path / "__init__.py", _tree(path, depth + 1)
            if inner or init.exists():
                lines += [_line(depth, path.name + "/", describe(init) if init.exists() else ""), *inner]
        elif path.is_file() and path.name != "__init__.py":
            lines.append(_line(depth, path.name, describe(path)))
    return lines


def layout(root: Path) -> str:
    """The package layout block: every source file with its first sentence (docs/architecture.md)."""
    lines = [_line(0, "elastic_jax/", describe(root / "elastic_jax" / "__init__.py")),
             *_tree(root / "elastic_jax", 1)]
    for name in ("benchmarks", "launch", "notebooks"):
        lines += [f"{name}/", *_tree(root / name, 1)]
    if (root / "configs").is_symlink():
        link = (root / "configs").readlink()
        lines.append(_line(0, "configs/", f"a link to {link}/ (documented paths keep working)"))
    tests = sorted(p.name for p in (root / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    lines.append(_line(0, "tests/", f"mirrors elastic_jax/ ({', '.join(tests)}, and the top-level modules)"))
    return "```\n" + "\n".join(lines) + "\n```"

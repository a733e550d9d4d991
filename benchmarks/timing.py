"""Timing shared by the benchmarks: peers measured in turns (background load hits each alike), in fresh processes."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def interleaved_times(steps: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps taking turns so that background load hits both alike."""
    for step in steps.values():
        for _ in range(warmup):  # compilation, allocator warm-up
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def compare(jax_fn: Callable[[], None], hf_fn: Callable[[], None], warmup: int, repeats: int
            ) -> tuple[float, float, float]:
    """Best-of-N seconds of each (the least disturbed call; the two take turns) and the ratio of their medians."""
    times = interleaved_times({"jax": jax_fn, "hf": hf_fn}, warmup, repeats)
    return min(times["jax"]), min(times["hf"]), float(np.median(times["hf"]) / np.median(times["jax"]))


def add_step_arguments(parser: argparse.ArgumentParser, warmup_help: str = "calls before timing") -> None:
    """The arguments every training-step benchmark takes: model config, batch shape, calls and processes."""
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help=warmup_help)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes to measure in (median reported)")


RESULT_TAG = "RESULT "


def report(result: dict, load_start: float | None = None) -> dict:
    """One machine-readable line with a process's figures (and the load average at its start and end), for
    `in_fresh_processes` to collect; returns the result."""
    if load_start is not None:
        result["load"] = [load_start, os.getloadavg()[0]]
    print(RESULT_TAG + json.dumps(result), flush=True)
    return result


def in_fresh_processes(processes: int, script: str, argv: list[str]) -> list[dict[str, float]]:
    """Run `script` `processes` times, each in a new interpreter, echoing its output; returns every run's result.

    A process's speed depends on things fixed at its start (heap layout, where its threads land, neighbours'
    memory traffic on a shared host): on a 2-core VM one process in five or so runs 15-30% slower throughout.
    Like pyperf, the benchmarks therefore measure in several processes and report the median.
    """
    results = []
    for i in range(processes):
        print(f"--- process {i + 1} of {processes}", flush=True)
        child = [*_without_out(argv), "--processes", "1"]  # the parent writes --out, once, from every result
        run = subprocess.run([sys.executable, script, *child], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"process {i + 1} failed:\n{run.stderr}")
        for line in run.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                results.append(json.loads(line[len(RESULT_TAG):]))
            else:
                print(line, flush=True)
    return results


def median_of(results: list[dict[str, float]], key: str) -> tuple[float, str]:
    """The median of one figure over processes, and every process's value for the printout."""
    values = [r[key] for r in results]
    return float(np.median(values)), ", ".join(f"{v:.2f}" for v in values)


def median_line(results: list[dict], key: str, label: str, target: str) -> str:
    """'<label>, median over N processes: 1.23x (target <target>; per process ...; load ...)'."""
    median, each = median_of(results, key)
    return (f"{label}, median over {len(results)} processes: {median:.2f}x (target {target}; per process {each}; "
            f"load {load_range(results)})")


def ratio_figures(results: list[dict], key: str, extra: tuple[str, ...] = ()) -> dict:
    """A ratio's results entry: its median over the processes, each process's, and the two sides' figures (`<key>_ours`,
    `<key>_peer` and `extra`) from the process with the median ratio."""
    median, each = median_of(results, key)
    mid = median_result(results, key)
    return {"ours": mid[f"{key}_ours"], "peer": mid[f"{key}_peer"], **{k: mid[f"{key}_{k}"] for k in extra},
            "ratio": median, "per_process": [r[key] for r in results], "spread": f"{each}x"}


def summarise(parser: argparse.ArgumentParser, args: argparse.Namespace, results: list[dict],
              ratios: dict[str, tuple[str, str]], repeats: str, extra: tuple[str, ...] = ()) -> None:
    """Print each ratio's median over the processes ({result key: (figure, target)}) and, given --out, store one
    entry per figure."""
    entries = {}
    for key, (figure, target) in ratios.items():
        if len(results) > 1:
            print(median_line(results, key, f"{figure} ratio", target))
        entries[entry_name(figure, parser, args)] = ratio_figures(results, key, extra)
    if args.out:
        save_entries(args.out, entries, repeats, results)


def median_result(results: list[dict], key: str) -> dict:
    """The result of the process whose `key` is the median one (its other figures go with it)."""
    ranked = sorted(results, key=lambda r: r[key])
    return ranked[(len(ranked) - 1) // 2]


# ---- load and results --------------------------------------------------------------------------------------------
def load_text() -> str:
    """The 1-minute load average, printed beside every figure: on a shared host it says how far to trust one."""
    return f"load {os.getloadavg()[0]:.2f}"


def load_range(results: list[dict]) -> str:
    """The lowest and highest 1-minute load average the processes saw, for the results file."""
    loads = [v for r in results for v in r.get("load", [])]
    return f"{min(loads):.2f}-{max(loads):.2f}" if loads else "not recorded"


def add_out_arguments(parser: argparse.ArgumentParser) -> None:
    """--out / --entry: where this run's figures go (benchmarks/render_docs.py puts them in the docs)."""
    parser.add_argument("--out", help="results JSON to write this run's figures into (e.g. benchmarks/results/"
                        "<name>.json); then `python benchmarks/render_docs.py` updates the docs")
    parser.add_argument("--entry", help="name of the entry in --out (default: the figure, the machine and the "
                        "arguments that differ from their defaults)")


# Arguments that change how long or how often a run measures, not what it measures: not part of an entry's name.
_NOT_IN_NAME = {"out", "entry", "processes", "repeats", "warmup", "min_time", "seqlens", "no_reference", "no_torch"}
_ENV = ("ELASTIC_JAX_", "XLA_FLAGS", "JAX_PLATFORMS")


def _without_out(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--entry"):
            skip = True
        elif not arg.startswith(("--out=", "--entry=")):
            out.append(arg)
    return out


def _env() -> list[str]:
    """The user's settings that shape the run (not JAX_PLATFORMS as tune_process() set it)."""
    from elastic_jax import platforms

    return [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(_ENV)
            and not (k == "JAX_PLATFORMS" and v == platforms.SET_BY_US)]


def machine_tag() -> str:
    import jax

    device = jax.devices()[0]
    return f"{len(os.sched_getaffinity(0))} CPUs" if device.platform == "cpu" else device.device_kind


def entry_name(figure: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`figure on <machine>` plus the settings (ELASTIC_JAX_* variables, arguments) that differ from the defaults:
    a re-run of the same command on the same kind of machine replaces its entry."""
    if args.entry:
        return f"{figure} {args.entry}"
    changed = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
               if k not in _NOT_IN_NAME and v != parser.get_default(k)]
    env = [e for e in _env() if e.startswith("ELASTIC_JAX_")]
    return " ".join([f"{figure} on {machine_tag()}", *env, *changed])


def _git(*argv: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True).stdout.strip()


def _machine() -> str:
    import jax

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    text = f"{len(os.sched_getaffinity(0))} CPU cores ({cpu}), {platform.system()}"
    device = jax.devices()[0]
    return text if device.platform == "cpu" else f"{device.device_kind}; {text}"


def save_entries(path: str, entries: dict[str, dict], repeats: str, results: list[dict],
                 command: str | None = None) -> None:
    """Write (or replace) `entries` ({name: figures}) in the results file `path`, each with how it was measured:
    the command (default: this script's, with the settings that change it), date, machine, load, repeats and
    spread, and the commit."""
    if command is None:
        script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
        env = [f"{name}={shlex.quote(value)}" for name, value in (e.split("=", 1) for e in _env())]
        command = " ".join([*env, shlex.join(["python", str(script), *_without_out(sys.argv[1:])])])
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "elastic_jax", "benchmarks"):
        commit += " with uncommitted changes"
    meta = {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(), "load": load_range(results), "repeats": repeats, "commit": commit}
    store = Path(path)
    data = json.loads(store.read_text()) if store.exists() else {}
    for name, figures in entries.items():
        data[name] = {**meta, "spread": figures.pop("spread", ""), "figures": figures}
    store.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {', '.join(entries)} to {path}; `python benchmarks/render_docs.py` puts them in the docs")

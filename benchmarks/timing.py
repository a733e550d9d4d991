"""Timing shared by the benchmarks: peers measured in turns (background load hits each alike), in fresh processes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

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


def report(result: dict[str, float]) -> None:
    """One machine-readable line with a process's figures, for `in_fresh_processes` to collect."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def in_fresh_processes(processes: int, script: str, argv: list[str]) -> list[dict[str, float]]:
    """Run `script` `processes` times, each in a new interpreter, echoing its output; returns every run's result.

    A process's speed depends on things fixed at its start (heap layout, where its threads land, neighbours'
    memory traffic on a shared host): on a 2-core VM one process in five or so runs 15-30% slower throughout.
    Like pyperf, the benchmarks therefore measure in several processes and report the median.
    """
    results = []
    for i in range(processes):
        print(f"--- process {i + 1} of {processes}", flush=True)
        run = subprocess.run([sys.executable, script, *argv, "--processes", "1"], capture_output=True, text=True)
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

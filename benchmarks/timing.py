"""Timing shared by the benchmarks: peers measured in turns, so that background load hits each alike."""

from __future__ import annotations

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

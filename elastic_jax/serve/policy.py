"""Dynamic model scaling: which budget `<name>@auto` requests get.

Policy (docs/serving.md states it for users): start at the largest trained budget. Every `window_s` seconds, read
the per-token latency (TPOT: a decode step's time over the tokens it made per row) and the time to first token
(TTFT) that requests saw in that window, at their 90th percentile. When either misses its target, step down to the
next smaller budget and remember the load (requests running or waiting) at which the larger one missed. Step back
up when both are within 80% of their targets and the load has fallen below 3/4 of the load at which the larger
budget missed (hysteresis, so the choice does not flap). Without targets, @auto is the largest budget. Every
change is logged and counted.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Sequence

log = logging.getLogger("elastic_jax.serve")
HEADROOM = 0.8  # step up only when latencies are this far inside their targets
LOAD_FALL = 0.75  # ... and the load is below this fraction of the load at which the larger budget missed


def p90(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


class AutoScaler:
    """The budget @auto serves now, from latencies observed under the current load."""

    def __init__(self, budgets: Sequence[float], slo_tpot_ms: float | None = None, slo_ttft_ms: float | None = None,
                 window_s: float = 2.0, on_change: Callable[[float, float, str], None] | None = None):
        self.budgets = tuple(sorted(budgets, reverse=True))
        self.targets = {"tpot": slo_tpot_ms, "ttft": slo_ttft_ms}
        self.window_s, self.on_change = window_s, on_change
        self.level = 0
        self.missed_at: dict[int, float] = {}  # level -> load at which that budget missed a target
        self.samples: dict[str, collections.deque] = {"tpot": collections.deque(), "ttft": collections.deque()}
        self.window_start: float | None = None

    @property
    def budget(self) -> float:
        return self.budgets[self.level]

    def observe(self, kind: str, seconds: float, now: float) -> None:
        """One latency sample ("tpot" or "ttft") seen at time `now`."""
        self.samples[kind].append((now, seconds * 1e3))

    def _window(self, kind: str, now: float) -> float | None:
        samples = self.samples[kind]
        while samples and samples[0][0] < now - self.window_s:
            samples.popleft()
        return p90([v for _, v in samples])

    def update(self, load: float, now: float) -> None:
        """Decide once per window; `load` is the number of requests running or waiting."""
        if not any(self.targets.values()):
            return
        if self.window_start is None or now - self.window_start < self.window_s:
            self.window_start = now if self.window_start is None else self.window_start
            return
        self.window_start = now
        seen = {k: self._window(k, now) for k in self.samples}
        ratio = max((seen[k] / t for k, t in self.targets.items() if t and seen[k] is not None), default=0.0)
        if ratio > 1.0 and self.level < len(self.budgets) - 1:
            self.missed_at[self.level] = load
            self._move(self.level + 1, f"p90 latency at {ratio:.2f}x the target with {load:g} requests")
        elif self.level > 0 and ratio <= HEADROOM and load < LOAD_FALL * self.missed_at.get(self.level - 1, math.inf):
            self._move(self.level - 1, f"p90 latency at {ratio:.2f}x the target, load fell to {load:g} requests")

    def _move(self, level: int, why: str) -> None:
        old, self.level = self.budget, level
        for samples in self.samples.values():
            samples.clear()  # the new budget's latencies are measured afresh
        log.info("auto budget %s -> %s: %s", old, self.budget, why)
        if self.on_change:
            self.on_change(old, self.budget, why)


__all__ = ["AutoScaler"]

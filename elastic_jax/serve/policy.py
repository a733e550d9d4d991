"""Dynamic model scaling: which budget `<name>@auto` requests get.

Policy (docs/serving.md states it for users): start at the largest trained budget. Every `window_s` seconds, read
the 90th percentile of the per-token latency (TPOT: a decode call's time over the tokens it made per row, any
request: they share the device) and of the time to first token (TTFT, of @auto requests: the queue @auto can
shorten) in that window, counting only requests that arrived since the last change (older ones measured the
budget before it). When the TPOT misses its target, or the TTFT does while @auto requests wait for a slot and
their queue did not shrink over the window (a shrinking one is a budget working off the queue the larger one
left; an empty one has nobody a smaller budget would serve sooner), step down to the next smaller budget and
remember the arrival rate at which the larger one missed. Step back up when the window measured both within 80%
of their targets (or the server is idle) and requests arrive at no more than 3/4 of that rate (hysteresis: the
arrival rate does not depend on the budget serving it, unlike the number of requests in the server, which falls
as soon as a smaller budget serves them faster). Without targets, @auto is the largest budget. Every change is
logged and counted.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Sequence

log = logging.getLogger("elastic_jax.serve")
HEADROOM = 0.8  # step up only when latencies are this far inside their targets
LOAD_FALL = 0.75  # ... and requests arrive at no more than this fraction of the rate at which the larger one missed
RATE_WINDOWS = 2  # the arrival rate is counted over this many windows (a Poisson count over one is too noisy)


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
        self.missed_rate: dict[int, float] = {}  # level -> arrival rate (requests/s) at which that budget missed
        self.samples: dict[str, collections.deque] = {"tpot": collections.deque(), "ttft": collections.deque()}
        self.arrivals: collections.deque[float] = collections.deque()
        self.window_start: float | None = None
        self.changed_at = -math.inf
        self.waiting = 0  # @auto requests waiting for a slot at the last decision

    @property
    def budget(self) -> float:
        return self.budgets[self.level]

    def arrived(self, now: float) -> None:
        """A request (of any budget) arrived at time `now`."""
        self.arrivals.append(now)

    def observe(self, kind: str, seconds: float, now: float, since: float = math.inf) -> None:
        """One latency sample ("tpot" or "ttft") seen at time `now` by a request that arrived at `since`; a request
        that arrived before the last change measured the budget before it, and is not counted."""
        if since >= self.changed_at:
            self.samples[kind].append((now, seconds * 1e3))

    def _window(self, kind: str, now: float) -> float | None:
        samples = self.samples[kind]
        while samples and samples[0][0] < now - self.window_s:
            samples.popleft()
        return p90([v for _, v in samples])

    def rate(self, now: float) -> float:
        """Requests per second that arrived over the last RATE_WINDOWS windows."""
        span = RATE_WINDOWS * self.window_s
        while self.arrivals and self.arrivals[0] < now - span:
            self.arrivals.popleft()
        return len(self.arrivals) / span

    def update(self, load: float, now: float, waiting: int = 0) -> None:
        """Decide once per window; `load` (requests running or waiting) is logged with a change, `waiting` (@auto
        requests waiting for a slot) tells a queue that grows from one being worked off."""
        if not any(self.targets.values()):
            return
        if self.window_start is None or now - self.window_start < self.window_s:
            self.window_start = now if self.window_start is None else self.window_start
            return
        self.window_start = now
        seen = {k: self._window(k, now) for k in self.samples}
        ratios = {k: seen[k] / t for k, t in self.targets.items() if t and seen[k] is not None}
        ratio = max(ratios.values(), default=0.0)
        # A late first token says the queue is too long only while it is there and not being worked off.
        queued, self.waiting = waiting > 0 and waiting >= self.waiting, waiting
        missed = ratios.get("tpot", 0.0) > 1.0 or (ratios.get("ttft", 0.0) > 1.0 and queued)
        rate = self.rate(now)
        where = f"{rate:.2f} requests/s arriving, {load:g} in the server, {waiting} @auto waiting"
        if missed and self.level < len(self.budgets) - 1:
            self.missed_rate[self.level] = rate
            self._move(self.level + 1, f"p90 latency at {ratio:.2f}x the target with {where}", now)
        elif (self.level > 0 and (ratios or load == 0) and ratio <= HEADROOM  # a busy window without samples
              and rate <= LOAD_FALL * self.missed_rate.get(self.level - 1, math.inf)):  # says nothing yet
            self._move(self.level - 1, f"p90 latency at {ratio:.2f}x the target, load fell to {where}", now)

    def _move(self, level: int, why: str, now: float) -> None:
        old, self.level, self.changed_at = self.budget, level, now
        for samples in self.samples.values():
            samples.clear()  # the new budget's latencies are measured afresh
        log.info("auto budget %s -> %s: %s", old, self.budget, why)
        if self.on_change:
            self.on_change(old, self.budget, why)


__all__ = ["AutoScaler"]

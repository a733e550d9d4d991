"""Is the machine idle enough for latencies to mean something? Load from other processes, measured while timing.

The kernel's load average counts this process too (after compiling it alone reads about 1-2 on a quiet machine), so
the check measures what other processes use: CPU time of the whole machine (/proc/stat) minus this process's own
(/proc/self/stat, every thread), over a window, in cores. The 1-minute load average is recorded beside it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from elastic_jax.model.functional import InputError

DEFAULT_MAX_LOAD = 1.0  #: cores busy with other work at which latencies stop being a result (of 2 on the dev VM)
QUIET_WINDOW_S = 3.0  #: the window sampled before timing starts (this process sleeps through it)


class BusyMachineError(InputError):
    """Other processes load the machine: latencies measured now would be theirs as much as ours (an InputError, so
    the command line prints its one line: the user's remedy is to pick the moment or the flag)."""


def _ticks() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), from /proc."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (sum(fields[:8]) - idle) / hz, (int(own[11]) + int(own[12])) / hz  # utime + stime


@dataclasses.dataclass
class LoadWindow:
    """CPU use by other processes between `start()` and `stop()`, in cores (0 = idle, cpu_count = saturated)."""

    machine: float = 0.0
    own: float = 0.0
    wall: float = 0.0

    def start(self) -> LoadWindow:
        self.machine, self.own = _ticks()
        self.wall = time.perf_counter()
        return self

    def stop(self) -> float:
        machine, own = _ticks()
        wall = max(time.perf_counter() - self.wall, 1e-9)
        return max(0.0, ((machine - self.machine) - (own - self.own)) / wall)


def check_max_load(max_load: Any) -> float:
    """The --max-load threshold, validated before anything loads."""
    if isinstance(max_load, bool) or not isinstance(max_load, (int, float)) or not max_load > 0:
        raise InputError(f"max_load (cores busy with other work at which timing is refused) must be a number > 0, "
                         f"got {max_load!r}")
    return float(max_load)


def require_idle(load: float, max_load: float, when: str) -> None:
    """Raise BusyMachineError (one line: the load seen and the threshold) when `load` >= `max_load`."""
    if load >= max_load:
        raise BusyMachineError(
            f"machine busy {when}: other processes used {load:.2f} cores (1-minute load average "
            f"{os.getloadavg()[0]:.2f}) on {os.cpu_count()} cores, threshold {max_load:g}; latencies measured now "
            f"are not a result. Run on an idle machine, raise --max-load, or pass --allow-busy (the JSON then marks "
            f"the timing as not a result)")


class LoadMonitor:
    """Records other processes' load before and during timing and refuses a busy machine unless told not to."""

    def __init__(self, max_load: float = DEFAULT_MAX_LOAD, allow_busy: bool = False):
        self.max_load = check_max_load(max_load)
        self.allow_busy = bool(allow_busy)
        self.before: float | None = None
        self.during: list[float] = []
        self.loadavg_before: float | None = None

    def quiet_check(self, window_s: float = QUIET_WINDOW_S) -> float:
        """Sleep through a window, measuring others' load (this process is idle in it)."""
        window = LoadWindow().start()
        time.sleep(window_s)
        self.before = window.stop()
        self.loadavg_before = os.getloadavg()[0]
        if not self.allow_busy:
            require_idle(self.before, self.max_load, "before timing")
        return self.before

    def timed(self, load: float, label: str) -> None:
        """One timed stretch's load from other processes."""
        self.during.append(load)
        if not self.allow_busy:
            require_idle(load, self.max_load, f"while timing {label}")

    def record(self) -> dict[str, Any]:
        """What the report's JSON keeps: every figure, the threshold, and whether the latencies are a result."""
        busy = [x for x in [self.before, *self.during] if x is not None and x >= self.max_load]
        return {"timing_result": not busy, "max_load": self.max_load, "cores": os.cpu_count(),
                "allow_busy": self.allow_busy, "other_load_before": self.before,
                "other_load_during_max": max(self.during, default=None),
                "other_load_during_mean": sum(self.during) / len(self.during) if self.during else None,
                "loadavg_1min_before": self.loadavg_before, "loadavg_1min_after": os.getloadavg()[0]}

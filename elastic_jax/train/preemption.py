"""SIGTERM handling: note the signal, let the loop finish its step, save, and stop with exit status 0.

Schedulers (SLURM, Kubernetes, TPU maintenance) send SIGTERM some seconds before killing a job; saving at
the current step turns the kill into a clean resume point.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
    """Context manager that installs a SIGTERM handler (main thread only) and reports whether to stop."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self) -> bool:
        """True once any process has received the signal (a collective when there are several processes)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.any(flags))

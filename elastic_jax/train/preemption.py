"""SIGTERM and Ctrl-C: note the signal, let the loop finish its step, save, and stop with exit status 0.

Schedulers (SLURM, Kubernetes, TPU maintenance) send SIGTERM some seconds before killing a job; saving at
the current step turns the kill into a clean resume point. Ctrl-C (SIGINT) does the same; a second Ctrl-C
aborts at once. A signal may reach only one process of a multi-process job, so the processes agree on
stopping with one tiny collective at step boundaries the loop chooses (`should_stop(sync=True)`): every
process then saves the same step and leaves the loop together, none is left waiting in a collective.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("elastic_jax.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """Context manager that installs SIGTERM / SIGINT handlers (main thread only) and says when to stop."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None  # the first stop signal this process received
        self.agreed = False  # set once the processes have agreed to stop
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.received is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        if self.received is None:
            self.received = signum
            extra = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            log.warning("%s received: saving a checkpoint at the next step boundary and stopping%s",
                        signal.Signals(signum).name, extra)

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self, sync: bool = True) -> bool:
        """True once any process has received a stop signal, agreed by every process.

        With one process this is the local flag, read at every call. With several it is one all-reduce of the
        flags, so it runs only where `sync` is True: every process must pass the same `sync` at the same step.
        """
        if not self.agreed:
            if jax.process_count() == 1:
                self.agreed = self.requested
            elif sync:
                flags = multihost_utils.process_allgather(np.array([int(self.requested)], np.int32))
                self.agreed = bool(np.any(flags))
        return self.agreed

    @property
    def signal_name(self) -> str:
        """The signal that stopped the run ('SIGTERM' when it came from another process)."""
        return signal.Signals(self.received).name if self.received is not None else "SIGTERM"

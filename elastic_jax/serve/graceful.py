"""uvicorn's server with the shutdown a model server needs: the first SIGTERM / Ctrl-C drains the scheduler (no
new requests; those in flight finish within the grace) and the exit status stays 0 (uvicorn would re-raise the
signal after its shutdown, ending the process by it); a second Ctrl-C forces the exit, as uvicorn's does."""

from __future__ import annotations

import contextlib
import logging
import signal

import uvicorn

from elastic_jax.serve.scheduler import Scheduler

log = logging.getLogger("elastic_jax.serve")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace_s: float):
        super().__init__(config)
        self.scheduler, self.grace_s = scheduler, grace_s

    @contextlib.contextmanager
    def capture_signals(self):
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            log.info("signal %d: accepting no new requests; finishing those in flight (up to %gs)", sig,
                     self.grace_s)
            self.scheduler.drain(self.grace_s)
        super().handle_exit(sig, frame)


__all__ = ["GracefulServer"]

"""Continuous batching: one thread owns the engine and the device. Between decode steps it takes new requests and
cancellations from an inbox, admits waiting requests into free rows of their architecture's slot batch, feeds
prompts a bounded number of tokens per step (a long prompt does not stall the others' decoding), and decodes a
few tokens for every decoding row of every served architecture. The HTTP side never touches JAX: it submits jobs
and reads their events.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time

from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.slots import RowSettings, SlotBatch
from elastic_jax.model.functional import InputError
from elastic_jax.serve.errors import ApiError
from elastic_jax.serve.jobs import ABORT, LENGTH, STOP, Job
from elastic_jax.serve.metrics import ServerMetrics
from elastic_jax.serve.models import ModelNames, format_budget
from elastic_jax.serve.policy import AutoScaler
from elastic_jax.serve.strategy import DecodeStrategy, PlainDecode
from elastic_jax.serve.textstream import TextStream

log = logging.getLogger("elastic_jax.serve")
IDLE_WAIT_S = 0.05  # how long the idle loop sleeps on the inbox before looking at the clock again


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    slots: int = 8  # rows per served architecture (vLLM's max_num_seqs, per budget)
    capacity: int = 1024  # tokens per row: prompt + max_tokens
    max_waiting: int = 64  # queued requests beyond which new ones get 429
    prefill_chunk: int = 64  # prompt tokens fed per scheduler step, over all prefilling requests
    decode_steps: int = 4  # tokens per row per decode call: requests join and leave between calls
    max_architectures: int = 6  # slot batches kept (each holds its budget's weights and caches)


class Scheduler:
    """The engine's owner. `submit` and `cancel` are safe from any thread; everything else runs in its thread."""

    def __init__(self, engine: Engine, names: ModelNames, config: SchedulerConfig, metrics: ServerMetrics,
                 scaler: AutoScaler, strategy: DecodeStrategy | None = None):
        self.engine, self.names, self.config = engine, names, config
        self.metrics, self.scaler = metrics, scaler
        self.strategy = strategy or PlainDecode()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.batches: collections.OrderedDict = collections.OrderedDict()  # spec -> SlotBatch, least recent first
        self._lock = threading.Lock()
        self._queued = 0  # submitted, not yet holding a slot (the bounded queue)
        self._accepting = True
        self._deadline: float | None = None  # set by drain(): unfinished requests end then (this thread's copy)
        self._drain_until: float | None = None  # the same, as the HTTP side reads it
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="elastic-jax-scheduler", daemon=True)
        self.error: BaseException | None = None

    # ---- any thread ---------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a request; 429 when the queue is full, 503 once the server is shutting down."""
        with self._lock:
            if not self._accepting:
                raise ApiError(503, "the server is shutting down and accepts no new requests")
            if self._queued >= self.config.max_waiting:
                raise ApiError(429, f"the server's queue is full ({self.config.max_waiting} requests waiting); "
                                    f"retry later", headers={"Retry-After": "1"})
            self._queued += 1
        self.metrics.waiting.inc()
        self.inbox.put(("submit", job))

    def cancel(self, job: Job) -> None:
        """The client went away: free the job's slot at the next step."""
        self.inbox.put(("cancel", job))

    def drain(self, grace_s: float) -> None:
        """Accept nothing new; requests in flight continue for up to `grace_s` seconds, then end ("length")."""
        with self._lock:
            self._accepting = False
            self._drain_until = time.monotonic() + grace_s
        self.inbox.put(("drain", self._drain_until))

    def past_deadline(self) -> bool:
        """True once drain()'s grace is over."""
        return self._drain_until is not None and time.monotonic() >= self._drain_until

    def idle(self) -> bool:
        with self._lock:
            return self._queued == 0 and not self.running

    def start(self) -> Scheduler:
        self.thread.start()
        return self

    def stop(self) -> None:
        """End the thread at its next phase boundary and wait for it: leaving the process while it is inside XLA
        (a compilation) would abort the process."""
        self._stop.set()
        self.inbox.put(("wake", None))
        if self.thread.is_alive():
            self.thread.join()

    # ---- the scheduler thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as err:  # a failing device step must not leave clients waiting forever
            log.exception("scheduler stopped")
            self.error = err
            for job in [*self.waiting, *self.running]:
                job.fail(ApiError(500, f"the server's decoding failed: {err}"))

    def step(self) -> None:
        """One round: inbox, admission, a bounded piece of prefill, one decode call per architecture."""
        self._read_inbox(block=not (self.waiting or self.running))
        self._expire()
        for phase in (self._admit, self._prefill, self._decode):
            if self._stop.is_set():  # shutting down: do not start more device work
                return
            phase()
        self.scaler.update(len(self.waiting) + len(self.running), time.monotonic(),
                           waiting=sum(job.budget is None for job in self.waiting))  # @auto's, not yet assigned
        self._gauges()

    def _read_inbox(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=IDLE_WAIT_S) if block else self.inbox.get_nowait()
            while True:
                self._handle(*item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return

    def _handle(self, kind: str, value) -> None:
        if kind == "submit":
            self._accept(value)
        elif kind == "cancel" and not value.finished:
            self._end(value, ABORT)
        elif kind == "drain":
            self._deadline = value

    def _accept(self, job: Job) -> None:
        """Resolve a fixed budget to an architecture (a 400 for one the router cannot reach) and queue the job. An
        @auto job gets its budget when it takes a slot: the budget @auto serves then, not when it arrived."""
        self.scaler.arrived(job.arrived)
        if job.req.budget is not None:
            try:
                self.engine.arch(job.req.budget)
            except (ElasticError, InputError) as err:
                self._unqueue()
                job.fail(ApiError(400, f"model: {err}", param="model"))
                return
            self._assign(job, job.req.budget)
        self.waiting.append(job)

    def _assign(self, job: Job, budget: float) -> None:
        tokenizer = self.engine.tokenizer
        text = TextStream(lambda ids: tokenizer.decode(ids), job.req.stop, skip_ids=(self.engine.cfg.eos_token_id,))
        job.accept(budget, self.names.id_of(budget), text)

    def _unqueue(self) -> None:
        with self._lock:
            self._queued -= 1
        self.metrics.waiting.dec()

    def _expire(self) -> None:
        """After drain's grace, every unfinished request ends now."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            for job in [*self.waiting, *self.running]:
                self._end(job, LENGTH)

    def _batch_for(self, budget: float) -> SlotBatch | None:
        """The architecture's slot batch, made on first use; None while the limit is reached and none is idle."""
        spec = self.engine.arch(budget).spec
        if spec in self.batches:
            self.batches.move_to_end(spec)
            return self.batches[spec]
        if len(self.batches) >= self.config.max_architectures:
            idle = next((s for s, b in self.batches.items() if b.busy == 0), None)
            if idle is None:
                return None
            gone = self.batches.pop(idle)
            self.metrics.slots.labels(format_budget(gone.arch.budget)).set(0)
        batch = SlotBatch(self.engine, budget, self.config.slots, self.config.capacity)
        self.batches[spec] = batch
        self.metrics.slots.labels(format_budget(budget)).set(self.config.slots)
        log.info("serving budget %s: %d slots of %d tokens", format_budget(budget), self.config.slots,
                 self.config.capacity)
        return batch

    def _admit(self) -> None:
        """Waiting jobs take free rows, oldest first; a job whose architecture has no free row waits (FIFO within
        an architecture, others pass it)."""
        for job in list(self.waiting):
            budget = self.scaler.budget if job.budget is None else job.budget
            batch = self._batch_for(budget)
            if batch is None or not batch.free:
                continue
            if job.budget is None:
                self._assign(job, budget)
            req = job.req
            stops = () if req.ignore_eos else (self.engine.cfg.eos_token_id,)
            settings = RowSettings(req.max_tokens, stops, req.temperature, req.top_k, req.top_p, req.seed)
            job.slots, job.row = batch, batch.admit(len(req.prompt), settings)
            self.strategy.admitted(batch, job.row)
            self.waiting.remove(job)
            self.running.append(job)
            self._unqueue()

    def _prefill(self) -> None:
        """Feed at most `prefill_chunk` prompt tokens in this step, oldest request first."""
        room = self.config.prefill_chunk
        for job in self.running:
            if room <= 0:
                break
            if not job.prefilling:
                continue
            piece = list(job.req.prompt[job.fed:job.fed + room])
            job.slots.feed(job.row, piece, largest=self.config.prefill_chunk)
            self.strategy.fed(job.slots, job.row, piece)
            job.fed += len(piece)
            room -= len(piece)
            if not job.prefilling:
                job.slots.start_decoding(job.row)
                self.metrics.prompt_tokens.labels(format_budget(job.budget)).inc(len(job.req.prompt))

    def _decode(self) -> None:
        for batch in list(self.batches.values()):
            if not batch.decoding.any():
                continue
            new = self.strategy.decode(batch, self.config.decode_steps)
            now = time.monotonic()
            for job in [j for j in self.running if j.slots is batch and j.row in new]:
                self._deliver(job, new[job.row], now)

    def _deliver(self, job: Job, ids: list[int], now: float) -> None:
        label = format_budget(job.budget)
        if ids:
            if job.first_token_at is None:
                self.metrics.ttft.labels(label).observe(now - job.arrived)
                if job.req.budget is None:  # @auto's queue is what its budget can shorten
                    self.scaler.observe("ttft", now - job.arrived, now, since=job.arrived)
            else:
                per_token = (now - job.last_token_at) / len(ids)
                self.metrics.tpot.labels(label).observe(per_token)
                self.scaler.observe("tpot", per_token, now, since=job.arrived)
            self.metrics.generation_tokens.labels(label).inc(len(ids))
            job.tokens(ids, now)
        if job.text.stopped or (ids and ids[-1] == self.engine.cfg.eos_token_id and not job.req.ignore_eos):
            self._end(job, STOP)
        elif not job.slots.decoding[job.row]:
            self._end(job, LENGTH)

    def _end(self, job: Job, reason: str) -> None:
        """The job is over: its row is free at once, its client gets the finish (unless it left)."""
        if job in self.waiting:
            self.waiting.remove(job)
            self._unqueue()
        if job in self.running:
            self.running.remove(job)
            job.slots.release(job.row)
            self.strategy.released(job.slots, job.row)
        job.finish(reason)
        label = format_budget(job.budget) if job.budget is not None else "none"
        self.metrics.requests.labels(label, reason).inc()
        if reason != ABORT and job.first_token_at is not None:
            self.metrics.e2e.labels(label).observe(time.monotonic() - job.arrived)

    def _gauges(self) -> None:
        self.metrics.running.set(len(self.running))
        for batch in self.batches.values():
            self.metrics.occupancy.labels(format_budget(batch.arch.budget)).set(batch.busy)


__all__ = ["Scheduler", "SchedulerConfig"]

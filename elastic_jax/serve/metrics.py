"""The server's Prometheus metrics (GET /metrics), in a registry of its own so that two servers in one process
(tests) do not collide. Names follow vLLM's where one exists (prefix `elastic_jax:`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series of every counter only add noise to a scrape
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Queue depth, batch occupancy, requests and tokens per budget, TTFT / TPOT / e2e latency, budget changes."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.waiting = Gauge("elastic_jax:num_requests_waiting", "Requests queued, not yet in a slot", registry=r)
        self.running = Gauge("elastic_jax:num_requests_running", "Requests holding a slot", registry=r)
        self.occupancy = Gauge("elastic_jax:batch_occupancy", "Slots in use per served budget", ["budget"],
                               registry=r)
        self.slots = Gauge("elastic_jax:batch_slots", "Slots allocated per served budget", ["budget"], registry=r)
        self.requests = Counter("elastic_jax:requests", "Finished requests per budget and finish reason",
                                ["budget", "finish_reason"], registry=r)
        self.rejected = Counter("elastic_jax:requests_rejected", "Requests refused, by HTTP status", ["status"],
                                registry=r)
        self.prompt_tokens = Counter("elastic_jax:prompt_tokens", "Prompt tokens prefilled per budget", ["budget"],
                                     registry=r)
        self.generation_tokens = Counter("elastic_jax:generation_tokens", "Tokens generated per budget", ["budget"],
                                         registry=r)
        self.ttft = Histogram("elastic_jax:time_to_first_token_seconds", "Arrival to first token", ["budget"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("elastic_jax:time_per_output_token_seconds", "Time per output token after the first",
                              ["budget"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("elastic_jax:e2e_request_latency_seconds", "Arrival to last token", ["budget"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.budget_changes = Counter("elastic_jax:auto_budget_changes", "Changes of the budget @auto serves",
                                      registry=r)
        self.auto_budget = Gauge("elastic_jax:auto_budget", "The budget @auto serves now", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]

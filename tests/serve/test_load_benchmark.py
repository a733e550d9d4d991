"""The load benchmark's arithmetic (benchmarks/serve_load_client.py and its table), without a server: the workload is
bounded in count and time and repeatable, and goodput counts the requests within every SLO as `vllm bench serve`
does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from serve_load_client import meets, poisson_workload, summarise  # noqa: E402


def test_poisson_arrivals_are_bounded_in_count_and_time_and_repeat_with_the_seed():
    many = poisson_workload(seed=3, count=1000, rate=20.0, window_s=2.0, prompt_len=5, max_tokens=4)
    assert 10 < len(many.arrivals) < 80 and max(many.arrivals) < 2.0  # the window ends it, not the count
    assert list(many.arrivals) == sorted(many.arrivals) and all(len(p) == 5 for p in many.prompts)
    assert poisson_workload(3, 1000, 20.0, 2.0, 5, 4) == many
    few = poisson_workload(seed=3, count=4, rate=20.0, window_s=60.0, prompt_len=5, max_tokens=4)
    assert len(few.arrivals) == 4 and few.arrivals == many.arrivals[:4]  # the count ends it
    burst = poisson_workload(seed=3, count=6, rate=float("inf"), window_s=1.0, prompt_len=5, max_tokens=4,
                             max_concurrency=2)
    assert burst.arrivals == (0.0,) * 6 and burst.max_concurrency == 2


def request(ttft: float, tpot: float | None, tokens: int = 8, model: str = "m@1.0") -> dict:
    e2e = ttft + (tpot or 0.0) * (tokens - 1)
    return {"ok": True, "ttft": ttft, "tpot": tpot, "e2e": e2e, "tokens": tokens, "itl": [], "model": model}


def test_goodput_counts_the_requests_within_every_slo_over_the_run():
    results = [request(0.5, 0.05), request(1.5, 0.05, model="m@0.7"), request(0.5, 0.2), request(0.9, None, 1),
               {"ok": False, "error": "429"}]
    assert [meets(r, 1000, 100) for r in results] == [True, False, False, True, False]
    assert meets(results[1], None, 100) and meets(results[2], 1000, None)
    s = summarise(results, duration=2.0, slo_ttft_ms=1000, slo_tpot_ms=100)
    assert s["goodput"] == 1.0 and s["completed"] == 4 and s["failed"] == 1
    assert s["request_throughput"] == 2.0 and s["output_throughput"] == (8 * 3 + 1) / 2.0
    assert s["served_by"] == {"m@1.0": 3, "m@0.7": 1} and s["errors"] == ["429"]
    assert s["ttft_ms"]["p50"] == pytest.approx(700.0) and s["tpot_ms"]["p50"] == pytest.approx(50.0)

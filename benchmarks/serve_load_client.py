"""The load benchmark's client: Poisson arrivals of streamed completions on loopback, measured as `vllm bench serve`
measures them. A request's clock starts when it is sent (at its arrival time, or when a --max-concurrency slot
frees); TTFT ends at the first chunk that carries a choice, even an empty one; ITL are the gaps between such chunks;
TPOT is (e2e - TTFT) / (output tokens - 1); the output tokens are the server's usage when it reports one. Goodput
is the requests per second that meet every SLO given (TTFT, TPOT).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import numpy as np
import openai


@dataclasses.dataclass(frozen=True)
class Workload:
    """The requests of one phase: their prompts and arrival times (seconds from the phase's start)."""

    prompts: tuple[str, ...]
    arrivals: tuple[float, ...]
    rate: float  # requests per second the arrivals were drawn at (inf: all at once)
    max_tokens: int
    max_concurrency: int | None  # None: every request is sent at its arrival (the server queues the rest)


def poisson_workload(seed: int, count: int, rate: float, window_s: float, prompt_len: int, max_tokens: int,
                     max_concurrency: int | None = None) -> Workload:
    """At most `count` requests of printable prompts (`prompt_len` characters; the byte tokenizer makes one token
    of each) arriving at `rate` per second (inf: all at once) within `window_s` seconds."""
    rng = random.Random(seed)
    prompts, arrivals, at = [], [], 0.0
    for _ in range(count):
        if rate != float("inf"):
            at += rng.expovariate(rate)
        if at >= window_s:
            break
        prompts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(prompt_len)))
        arrivals.append(at)
    return Workload(tuple(prompts), tuple(arrivals), rate, max_tokens, max_concurrency)


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int, extra: dict) -> dict:
    """The timings of one streamed completion and the model that answered it."""
    start = time.perf_counter()
    first = last = served = usage = finish = None
    gaps, chunks = [], 0
    try:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True, extra_body=extra)
        async for chunk in stream:
            served = served or chunk.model
            if getattr(chunk, "usage", None):
                usage = chunk.usage.completion_tokens
            if chunk.choices:
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last, chunks = now, chunks + 1
                finish = chunk.choices[0].finish_reason or finish
    except openai.APIError as err:
        return {"ok": False, "error": str(err)[:200]}
    if first is None:
        return {"ok": False, "error": "no tokens"}
    # Without usage (llama-cpp-python's server has no stream_options): a stream ended by its length made
    # max_tokens tokens; otherwise one chunk is one token.
    tokens = usage or (max_tokens if finish == "length" else chunks)
    e2e, ttft = last - start, first - start
    return {"ok": True, "ttft": ttft, "e2e": e2e, "tokens": tokens, "itl": gaps, "model": served,
            "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 else None}


async def _run(base_url: str, model: str, work: Workload, extra: dict, timeout_s: float
               ) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=timeout_s)
    gate = asyncio.Semaphore(work.max_concurrency or len(work.prompts) or 1)
    start = time.perf_counter()

    async def launch(prompt: str, at: float) -> dict:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
        async with gate:
            return await one_request(client, model, prompt, work.max_tokens, extra)

    results = await asyncio.gather(*(launch(p, at) for p, at in zip(work.prompts, work.arrivals)))
    await client.close()
    return list(results), time.perf_counter() - start


def run_load(base_url: str, model: str, work: Workload, extra: dict, timeout_s: float = 600.0
             ) -> tuple[list[dict], float]:
    """Every request of `work` at its arrival time; returns the results and the phase's duration (first arrival
    to last token)."""
    return asyncio.run(_run(base_url, model, work, extra, timeout_s))


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    ms = np.asarray(values) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def meets(result: dict, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """A completed request within every SLO given (a one-token answer has no TPOT)."""
    return (result["ok"] and (slo_ttft_ms is None or result["ttft"] * 1e3 <= slo_ttft_ms)
            and (slo_tpot_ms is None or result["tpot"] is None or result["tpot"] * 1e3 <= slo_tpot_ms))


def summarise(results: list[dict], duration: float, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> dict:
    """One phase's figures, as `vllm bench serve` reports them, and which models answered."""
    done = [r for r in results if r["ok"]]
    served: dict[str, int] = {}
    for r in done:
        served[r["model"]] = served.get(r["model"], 0) + 1
    return {"requests": len(results), "completed": len(done), "failed": len(results) - len(done),
            "duration_s": duration, "request_throughput": len(done) / duration,
            "output_throughput": sum(r["tokens"] for r in done) / duration,
            "goodput": sum(meets(r, slo_ttft_ms, slo_tpot_ms) for r in results) / duration,
            "ttft_ms": percentiles([r["ttft"] for r in done]),
            "tpot_ms": percentiles([r["tpot"] for r in done if r["tpot"] is not None]),
            "itl_ms": percentiles([g for r in done for g in r["itl"]]),
            "e2e_ms": percentiles([r["e2e"] for r in done]), "served_by": served,
            "errors": sorted({r["error"] for r in results if not r["ok"]})[:5]}

"""Serving under load: Poisson arrivals on loopback against `elastic-jax serve` (one run per model id, e.g. the
full budget and @auto) and against llama.cpp's own OpenAI server (`python -m llama_cpp.server`) on the GGUF export
of a budget, the same requests in the same order at the same times. Reported as `vllm bench serve` defines them:
TTFT (arrival of the request to its first token), TPOT ((e2e - TTFT) / (output tokens - 1), per request), ITL
(gaps between streamed chunks), end-to-end latency, throughput, and goodput (requests per second that meet every
given SLO). Bounded in requests (--requests) and in time (--time-limit-s).

Every figure is printed with the machine's load average beside it; the script refuses to time while other
processes keep more than --max-load cores busy (default: the core count) unless --allow-busy (the JSON then
marks the timing as not a result).
Usage: python benchmarks/serve_load.py --checkpoint quickstart/elastic/checkpoints [--models 1.0,auto]
    [--requests 64] [--rate 8] [--max-concurrency 8] [--prompt-len 32] [--max-tokens 32]
    [--slo-ttft-ms 500] [--slo-tpot-ms 50] [--llamacpp-budget 1.0] [--out benchmarks/results/serve_load.json]
llama.cpp runs a GGUF only when the model does not mix dense `-` and MoE `E` layers (convert/gguf.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
from timing import add_out_arguments, entry_name, save_entries  # a sibling script

from elastic_jax import tune_process
from elastic_jax.inference.idle import LoadMonitor
from elastic_jax.model_io import read_metadata

STARTUP_LIMIT_S = 900  # a server that is not up by then is reported as failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    start = time.monotonic()
    while time.monotonic() - start < STARTUP_LIMIT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=5).status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}: the server did not come up in {STARTUP_LIMIT_S}s")


def started(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Wait for the server; one that does not come up is stopped, not left behind."""
    try:
        wait_up(proc, url, log)
    except BaseException:
        stop(proc)
        raise
    print(f"up: {url}", flush=True)


def start_ours(args, workdir: Path) -> tuple[subprocess.Popen, str]:
    port, log = free_port(), workdir / "elastic_jax_serve.log"
    cmd = [sys.executable, "-m", "elastic_jax.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
           "--served-model-name", "m", "--slots", str(args.max_concurrency), *args.serve_args.split()]
    if args.slo_ttft_ms:
        cmd += ["--slo-ttft-ms", str(args.slo_ttft_ms)]
    if args.slo_tpot_ms:
        cmd += ["--slo-tpot-ms", str(args.slo_tpot_ms)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    started(proc, f"http://127.0.0.1:{port}/health", log)
    return proc, f"http://127.0.0.1:{port}/v1"


def start_llamacpp(args, workdir: Path) -> tuple[subprocess.Popen, str]:
    """The GGUF export of --llamacpp-budget (f32), served by llama.cpp's OpenAI server."""
    gguf, port, log = workdir / "budget.gguf", free_port(), workdir / "llama_cpp_server.log"
    subprocess.run([sys.executable, "-m", "elastic_jax.cli", "export-gguf", "--checkpoint", args.checkpoint,
                    "--budget", str(args.llamacpp_budget), "--dtype", "f32", "--out", str(gguf)], check=True)
    threads = str(args.threads or len(os.sched_getaffinity(0)))
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
                             "--port", str(port), "--n_ctx", str(args.prompt_len + args.max_tokens + 64),
                             "--n_threads", threads, "--n_threads_batch", threads],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    started(proc, f"http://127.0.0.1:{port}/v1/models", log)
    return proc, f"http://127.0.0.1:{port}/v1"


def workload(args) -> tuple[list[str], list[float]]:
    """The prompts (printable text of --prompt-len characters) and their arrival times (Poisson at --rate)."""
    rng = random.Random(args.seed)
    prompts = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(args.prompt_len))
               for _ in range(args.requests)]
    gaps = [rng.expovariate(args.rate) if args.rate > 0 else 0.0 for _ in range(args.requests)]
    return prompts, list(np.cumsum(gaps))


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, args, extra: dict) -> dict:
    """Times of one streamed completion: TTFT, chunk gaps, e2e, output tokens, the model that answered."""
    start = time.perf_counter()
    first, last, gaps, chunks, usage, served = None, None, [], 0, None, None
    try:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=args.max_tokens,
                                                 temperature=0, stream=True, extra_body=extra)
        async for chunk in stream:
            served = served or chunk.model
            if getattr(chunk, "usage", None):
                usage = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].text:
                now = time.perf_counter()
                first = first or now
                if last is not None:
                    gaps.append(now - last)
                last, chunks = now, chunks + 1
    except openai.APIError as err:
        return {"ok": False, "error": str(err)[:200]}
    if first is None:
        return {"ok": False, "error": "no tokens"}
    tokens = usage or chunks  # without usage (llama.cpp's server): one token per chunk
    e2e = last - start
    return {"ok": True, "ttft": first - start, "e2e": e2e, "tokens": tokens, "itl": gaps, "model": served,
            "tpot": (e2e - (first - start)) / (tokens - 1) if tokens > 1 else None}


async def run_load(base_url: str, model: str, args, prompts: list[str], arrivals: list[float], extra: dict
                   ) -> tuple[list[dict], float]:
    """Every request at its arrival time (at most --max-concurrency in flight); new arrivals stop at
    --time-limit-s. Returns the results and the run's duration."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=args.time_limit_s * 2)
    gate = asyncio.Semaphore(args.max_concurrency)
    start = time.perf_counter()

    async def launch(prompt: str, at: float) -> dict:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
        async with gate:
            return await one_request(client, model, prompt, args, extra)

    tasks = [asyncio.create_task(launch(p, at)) for p, at in zip(prompts, arrivals) if at < args.time_limit_s]
    results = await asyncio.gather(*tasks)
    await client.close()
    return list(results), time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    ms = np.asarray(values) * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def summarise(results: list[dict], duration: float, args) -> dict:
    done = [r for r in results if r["ok"]]
    meets = [r for r in done if (not args.slo_ttft_ms or r["ttft"] * 1e3 <= args.slo_ttft_ms)
             and (not args.slo_tpot_ms or r["tpot"] is None or r["tpot"] * 1e3 <= args.slo_tpot_ms)]
    served: dict[str, int] = {}
    for r in done:
        served[r["model"]] = served.get(r["model"], 0) + 1
    return {"completed": len(done), "failed": len(results) - len(done), "duration_s": duration,
            "request_throughput": len(done) / duration, "output_throughput": sum(r["tokens"] for r in done) / duration,
            "goodput": len(meets) / duration, "ttft_ms": percentiles([r["ttft"] for r in done]),
            "tpot_ms": percentiles([r["tpot"] for r in done if r["tpot"] is not None]),
            "itl_ms": percentiles([g for r in done for g in r["itl"]]),
            "e2e_ms": percentiles([r["e2e"] for r in done]), "served_by": served,
            "errors": sorted({r["error"] for r in results if not r["ok"]})[:5]}


def show(label: str, s: dict, load: tuple[float, float]) -> None:
    tag = f"[load {load[0]:.2f}->{load[1]:.2f}, {os.cpu_count()} cores]"
    fmt = lambda p: "n/a" if p["p50"] is None else f"p50 {p['p50']:.1f} / p99 {p['p99']:.1f} ms"
    print(f"{label}: {s['completed']} done, {s['failed']} failed in {s['duration_s']:.1f}s {tag}\n"
          f"  throughput {s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} tok/s {tag}\n"
          f"  goodput {s['goodput']:.2f} req/s {tag}\n  TTFT {fmt(s['ttft_ms'])} {tag}\n"
          f"  TPOT {fmt(s['tpot_ms'])} {tag}\n  e2e {fmt(s['e2e_ms'])} {tag}\n  served by {s['served_by']}")


def served_models(base_url: str) -> list[str]:
    """The fixed models a server lists (ours: every trained budget; not @auto, which picks among them)."""
    with urllib.request.urlopen(f"{base_url}/models", timeout=60) as response:
        return [m["id"] for m in json.loads(response.read())["data"] if not m["id"].endswith("@auto")]


def timed_run(label: str, base_url: str, model: str, args, monitor: LoadMonitor, extra: dict) -> dict:
    """A warm-up of every model the server lists (compilation, not timed: @auto may pick any), a quiet check, then
    the load."""
    prompts, arrivals = workload(args)
    warm = argparse.Namespace(**{**vars(args), "max_concurrency": 1})
    for listed in served_models(base_url):
        asyncio.run(run_load(base_url, listed, warm, prompts[:2], [0.0, 0.0], extra))
    monitor.quiet_check(args.quiet_s)
    before = os.getloadavg()[0]
    results, duration = asyncio.run(run_load(base_url, model, args, prompts, arrivals, extra))
    summary = {**summarise(results, duration, args), "loadavg_1min": [before, os.getloadavg()[0]],
               "other_load_before": monitor.before}
    show(label, summary, tuple(summary["loadavg_1min"]))
    return summary


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    if proc.poll() is None:
        proc.kill()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="elastic checkpoint to serve")
    p.add_argument("--models", default="1.0,auto", help="budgets to load-test, each its own run (auto: @auto)")
    p.add_argument("--requests", type=int, default=64, help="requests per run (the bound in count)")
    p.add_argument("--rate", type=float, default=8.0, help="Poisson arrival rate, requests/s (0: all at once)")
    p.add_argument("--max-concurrency", type=int, default=8, help="requests in flight at most (and our --slots)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt characters (byte tokenizer: tokens)")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (eos ignored)")
    p.add_argument("--slo-ttft-ms", type=float, help="goodput's TTFT target; also our @auto's")
    p.add_argument("--slo-tpot-ms", type=float, help="goodput's TPOT target; also our @auto's")
    p.add_argument("--time-limit-s", type=float, default=120.0, help="no new arrivals after this (the time bound)")
    p.add_argument("--llamacpp-budget", type=float, help="also load-test llama.cpp's server on this budget's GGUF")
    p.add_argument("--threads", type=int, help="llama.cpp's threads (default: every core)")
    p.add_argument("--serve-args", default="", help="more `elastic-jax serve` arguments, one string")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet-s", type=float, default=3.0, help="the quiet check's window before each run")
    p.add_argument("--max-load", type=float, default=float(os.cpu_count()),
                   help="cores other processes may keep busy before timing is refused (default: all)")
    p.add_argument("--allow-busy", action="store_true", help="time anyway on a busy machine (marked in the JSON)")
    add_out_arguments(p)
    return p


def main() -> int:
    args = parser().parse_args()
    tune_process()  # JAX_PLATFORMS as the command line sets it (this process only asks jax for the machine's name)
    monitor = LoadMonitor(args.max_load, args.allow_busy)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_ours(args, Path(tmp))
        try:
            for budget in args.models.split(","):
                model = f"m@{budget.strip()}"
                runs[f"elastic_jax {model}"] = timed_run(f"elastic_jax {model}", url, model, args, monitor, {
                    "ignore_eos": True, "stream_options": {"include_usage": True}})  # usage: the token count
        finally:
            stop(proc)
        if args.llamacpp_budget is not None:
            label = f"llama.cpp @{args.llamacpp_budget}"
            try:
                proc, url = start_llamacpp(args, Path(tmp))
            except (RuntimeError, subprocess.CalledProcessError) as err:  # e.g. a model llama.cpp cannot run
                print(f"{label}: not run: {err}")
                runs[label] = {"error": str(err)[-2000:]}
            else:
                try:  # eos made impossible, as ignore_eos does on ours: both make --max-tokens tokens
                    eos = read_metadata(args.checkpoint)["model"].get("eos_token_id", 2)
                    runs[label] = timed_run(label, url, "m", args, monitor, {"logit_bias": {str(eos): -100.0}})
                finally:
                    stop(proc)
    if args.out:
        loads = [{"load": run["loadavg_1min"]} for run in runs.values() if "loadavg_1min" in run]
        figures = {"runs": runs, "load_monitor": monitor.record(), "settings": vars(args)}
        save_entries(args.out, {entry_name("serve load", parser(), args): figures}, "one run", loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

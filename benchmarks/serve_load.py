"""Serving under load, in one run: `elastic-jax serve` with `@auto` against the same server fixed at the full
budget, and against llama.cpp's own OpenAI server (`python -m llama_cpp.server`) on the GGUF export of that budget.

Phases, each on loopback with the figures `vllm bench serve` reports (serve_load_client.py):
1. `8 concurrent`: --concurrent-requests requests, --concurrency (8) in flight, on our full budget. Its request
   throughput is the full budget's capacity, which sets the rates of the phases below.
2. `low load, @auto`: --low-requests Poisson arrivals at --low-load x that capacity: @auto should serve the
   full budget.
3. `high load, @auto` then `high load, @1.0`: the same Poisson arrivals at --high-load x the capacity, a load the
   full budget cannot hold: its queue grows and TTFT passes the SLO. Goodput (requests per second meeting every
   SLO) of each, and which budgets @auto served and when it changed them (the server's log).
4. `8 concurrent, llama.cpp`: phase 1's requests against llama.cpp on the GGUF of the full budget: throughput and
   TTFT p50 / p99 beside ours.
Each phase is bounded in requests (--requests, --concurrent-requests) and in time (--window-s of arrivals).

Without --checkpoint the model is a random `small` parent with an untrained router, made once and cached
(serve_load_model.py): llama.cpp cannot run a pattern that mixes dense `-` and MoE `E` layers.
Every figure is printed beside the 1-minute load average and the cores other processes used meanwhile (the load
average counts our own server too). The run refuses to start at a load average above the core count, and to call a
phase a result while other processes keep --max-load cores busy, unless --allow-busy (the JSON then says that the
figures are not a result).
Usage: python benchmarks/serve_load.py --out benchmarks/results/serve_load.json   (then
    `python benchmarks/render_docs.py`; the table is in docs/serving.md)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from serve_load_client import Workload, poisson_workload, run_load, summarise  # sibling scripts
from serve_load_model import DEFAULT_PATTERN, cached_checkpoint
from serve_load_servers import (
    OthersWindow,
    ServerProcess,
    auto_changes,
    export_gguf,
    listed_models,
    start_llamacpp,
    start_ours,
    wait_for_budget,
)
from timing import add_out_arguments, entry_name, load_text, save_entries

from elastic_jax import tune_process
from elastic_jax.inference.idle import DEFAULT_MAX_LOAD, LoadMonitor

LOW, HIGH_AUTO, HIGH_FULL = "low load, @auto", "high load, @auto", "high load, @1.0"
CONCURRENT, PEER = "{} concurrent, elastic_jax @1.0", "{} concurrent, llama.cpp @1.0"  # .format(--concurrency)
LOW_WINDOWS = 3  # the low load's arrivals may take this many --window-s: few arrive in one
OURS_EXTRA = {"ignore_eos": True, "stream_options": {"include_usage": True}}  # every request makes max_tokens


class Run:
    """One benchmark run: the settings, the load monitor and every phase's figures."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.phases, self.loads, self.changes = args, {}, [], []
        self.monitor = LoadMonitor(args.max_load, args.allow_busy)

    def phase(self, name: str, server: ServerProcess, model: str, work: Workload, extra: dict) -> dict:
        """A quiet check, then the workload against `model`, measured and printed with the load beside it."""
        self.monitor.quiet_check(self.args.quiet_s)
        before, changes = os.getloadavg()[0], len(auto_changes(server.log))
        with OthersWindow([server.proc.pid]) as others:
            results, duration = run_load(server.url, model, work, extra)
        self.monitor.timed(others.cores, name)
        slo = (self.args.slo_ttft_ms, self.args.slo_tpot_ms)
        summary = {**summarise(results, duration, *slo), "loadavg_1min": [before, os.getloadavg()[0]],
                   "other_cores_before": self.monitor.before, "other_cores_during": others.cores,
                   "arrival_rate": None if work.rate == float("inf") else work.rate,
                   "auto_changes": auto_changes(server.log)[changes:]}  # @auto's, logged while the phase ran
        self.phases[name] = summary
        self.loads.append({"load": summary["loadavg_1min"]})
        show(name, summary)
        return summary


def show(name: str, s: dict) -> None:
    tag = (f"[load {s['loadavg_1min'][0]:.2f}->{s['loadavg_1min'][1]:.2f}, other processes "
           f"{s['other_cores_during']:.2f} of {os.cpu_count()} cores]")
    ms = lambda p: "n/a" if p["p50"] is None else f"p50 {p['p50']:.0f} / p99 {p['p99']:.0f} ms"
    rate = "all at once" if s["arrival_rate"] is None else f"Poisson arrivals at {s['arrival_rate']:.2f} req/s"
    print(f"{name}: {s['completed']} of {s['requests']} done ({rate}) in {s['duration_s']:.1f}s {tag}\n"
          f"  throughput {s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} tok/s {tag}\n"
          f"  goodput {s['goodput']:.2f} req/s {tag}\n  TTFT {ms(s['ttft_ms'])} {tag}\n"
          f"  TPOT {ms(s['tpot_ms'])} {tag}\n  e2e {ms(s['e2e_ms'])} {tag}\n  served by {s['served_by']}"
          + (f"\n  errors {s['errors']}" if s["errors"] else "")
          + "".join(f"\n  @auto's budget {c}" for c in s["auto_changes"]), flush=True)


def warm_up(server: ServerProcess, args: argparse.Namespace, extra: dict) -> None:
    """Compile every listed budget's programs (not timed; @auto may pick any): a batch of concurrent requests each,
    so that prompts are fed in pieces of every size the phases use."""
    work = poisson_workload(args.seed + 99, args.concurrency, float("inf"), 1.0, args.prompt_len, 8)
    for model in listed_models(server):
        results, _ = run_load(server.url, model, work, extra)
        failed = [r["error"] for r in results if not r["ok"]]
        if failed:
            raise RuntimeError(f"warm-up of {model} failed: {failed[0]}")
    print(f"warmed up {', '.join(listed_models(server))} | {load_text()}", flush=True)


def workloads(args: argparse.Namespace, capacity: float) -> dict[str, Workload]:
    """The Poisson phases' arrivals, at fractions of the full budget's measured capacity (requests per second)."""
    low = args.low_rate or args.low_load * capacity
    high = args.high_rate or args.high_load * capacity
    make = lambda seed, count, rate, window: poisson_workload(seed, count, rate, window, args.prompt_len,
                                                             args.max_tokens)
    return {"low": make(args.seed + 1, args.low_requests, low, LOW_WINDOWS * args.window_s),
            "high": make(args.seed + 2, args.requests, high, args.window_s)}


def ours_phases(run: Run, args: argparse.Namespace, checkpoint: str, tmp: Path) -> Workload:
    """Phases 1-3 on one server; returns phase 1's workload (llama.cpp gets the same)."""
    context = args.prompt_len + 1 + args.max_tokens  # the byte tokenizer: one token a character, and the bos
    server = start_ours(checkpoint, args.concurrency, context, args.slo_ttft_ms, args.slo_tpot_ms,
                        args.serve_args.split(), tmp / "elastic_jax_serve.log")
    try:
        warm_up(server, args, OURS_EXTRA)
        concurrent = poisson_workload(args.seed, args.concurrent_requests, float("inf"), args.window_s,
                                      args.prompt_len, args.max_tokens, args.concurrency)
        first = run.phase(CONCURRENT.format(args.concurrency), server, "m@1.0", concurrent, OURS_EXTRA)
        capacity = first["request_throughput"]
        work = workloads(args, capacity)
        for name, model, key in ((LOW, "m@auto", "low"), (HIGH_AUTO, "m@auto", "high"),
                                 (HIGH_FULL, "m@1.0", "high")):
            if model == "m@auto":  # the policy returns to the full budget once the load has fallen
                print(f"@auto back at 1.0 after {wait_for_budget(server, 1.0, args.settle_s):.1f}s idle", flush=True)
            run.phase(name, server, model, work[key], OURS_EXTRA)
    finally:
        server.stop()
    run.changes = auto_changes(tmp / "elastic_jax_serve.log")
    return concurrent


def peer_phase(run: Run, args: argparse.Namespace, checkpoint: str, tmp: Path, work: Workload) -> None:
    """Phase 4: llama.cpp on the full budget's GGUF, the same requests; eos made impossible (a logit bias) as
    ignore_eos does on ours, so both make max_tokens tokens."""
    from elastic_jax.model_io import read_metadata

    threads = args.threads or len(os.sched_getaffinity(0))
    gguf = export_gguf(checkpoint, 1.0, tmp / "full.gguf")
    server = start_llamacpp(gguf, args.prompt_len + 1 + args.max_tokens + 16, threads, tmp / "llama_cpp.log")
    try:
        eos = read_metadata(checkpoint)["model"].get("eos_token_id", 2)
        extra = {"logit_bias": {str(eos): -100.0}}
        run_load(server.url, "m", poisson_workload(args.seed + 99, 1, float("inf"), 1.0, args.prompt_len, 8),
                 extra)  # the first request loads what llama.cpp loads lazily
        run.phase(PEER.format(args.concurrency), server, "m", work, extra)
    finally:
        server.stop()


def verdict(run: Run) -> dict:
    """The bar's figures: @auto's goodput over the fixed full budget's, and ours over llama.cpp's throughput."""
    p = run.phases
    ratio = lambda a, b, key: p[a][key] / p[b][key] if a in p and b in p and p[b][key] else None
    out = {"goodput_ratio": ratio(HIGH_AUTO, HIGH_FULL, "goodput"),
           "throughput_ratio": ratio(*(n.format(run.args.concurrency) for n in (CONCURRENT, PEER)),
                                     "output_throughput"),
           "low_load_served": sorted(p[LOW]["served_by"]) if LOW in p else None,
           "high_load_served": p[HIGH_AUTO]["served_by"] if HIGH_AUTO in p else None}
    goodputs = " against ".join(f"{p[k]['goodput']:.2f}" for k in (HIGH_AUTO, HIGH_FULL) if k in p)
    for line in (f"@auto / @1.0 goodput at high load: {out['goodput_ratio']:.2f}x (goal >= 1.5x)"
                 if out["goodput_ratio"] is not None else f"@auto / @1.0 goodput at high load: {goodputs} req/s",
                 f"at low load @auto served {out['low_load_served']} (goal: m@1.0 only)",
                 f"ours / llama.cpp output throughput at {run.args.concurrency} concurrent: "
                 f"{out['throughput_ratio']:.2f}x (goal > 1x)"
                 if out["throughput_ratio"] is not None else "llama.cpp: not run"):
        print(f"{line} | {load_text()}", flush=True)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="elastic checkpoint to serve (default: the cached random small parent)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "elastic_jax" / "serve_load"),
                   help="where the random parent is kept between runs")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0, help="goodput's TTFT target; also @auto's")
    p.add_argument("--slo-tpot-ms", type=float, default=100.0, help="goodput's TPOT target; also @auto's")
    p.add_argument("--concurrency", type=int, default=8, help="phase 1 and 4's requests in flight; our --slots")
    p.add_argument("--concurrent-requests", type=int, default=32, help="requests of phases 1 and 4")
    p.add_argument("--low-load", type=float, default=0.25, help="low load's arrival rate, x the full capacity")
    p.add_argument("--high-load", type=float, default=1.6, help="high load's arrival rate, x the full capacity")
    p.add_argument("--low-rate", type=float, help="low load's arrival rate in req/s (instead of --low-load)")
    p.add_argument("--high-rate", type=float, help="high load's arrival rate in req/s (instead of --high-load)")
    p.add_argument("--requests", type=int, default=96, help="requests of each high-load phase at most")
    p.add_argument("--low-requests", type=int, default=12, help="requests of the low-load phase at most")
    p.add_argument("--window-s", type=float, default=12.0, help="seconds of arrivals per phase at most")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt characters (byte tokenizer: tokens)")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (eos ignored)")
    p.add_argument("--settle-s", type=float, default=60.0, help="how long an idle server may take to return "
                   "@auto to the full budget before an @auto phase")
    p.add_argument("--no-llamacpp", action="store_true", help="skip phase 4")
    p.add_argument("--threads", type=int, help="llama.cpp's threads (default: every core)")
    p.add_argument("--serve-args", default="", help="more `elastic-jax serve` arguments, one string")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet-s", type=float, default=3.0, help="the quiet check's window before each phase")
    p.add_argument("--max-load", type=float, default=DEFAULT_MAX_LOAD,
                   help="cores other processes may keep busy before a phase is not a result")
    p.add_argument("--allow-busy", action="store_true", help="run anyway on a busy machine (marked in the JSON)")
    add_out_arguments(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """One clear error for a setting out of range, before any server starts."""
    for name in ("concurrency", "concurrent_requests", "requests", "low_requests", "prompt_len", "max_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    for name in ("low_load", "high_load", "window_s", "slo_ttft_ms", "slo_tpot_ms", "low_rate", "high_rate"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SystemExit(f"--{name.replace('_', '-')}: must be > 0, got {value}")
    if args.max_tokens < 2:
        raise SystemExit("--max-tokens: must be >= 2 (TPOT needs a second token)")


def main() -> int:
    args = parser().parse_args()
    check_args(args)
    tune_process()
    cores, start_load = os.cpu_count(), os.getloadavg()[0]
    if start_load > cores and not args.allow_busy:
        raise SystemExit(f"load average {start_load:.2f} on {cores} cores: timings now are not a result; run "
                               f"on a quiet machine or pass --allow-busy")
    run, start = Run(args), time.monotonic()
    checkpoint = args.checkpoint or str(cached_checkpoint(Path(args.cache), "small", DEFAULT_PATTERN,
                                                          [1.0, 0.7, 0.4]) / "checkpoints")
    with tempfile.TemporaryDirectory() as tmp:
        work = ours_phases(run, args, checkpoint, Path(tmp))
        if not args.no_llamacpp:
            peer_phase(run, args, checkpoint, Path(tmp), work)
    figures = {"phases": run.phases, **verdict(run), "auto_changes": run.changes,
               "load_monitor": {**run.monitor.record(), "loadavg_1min_at_start": start_load},
               "run_s": time.monotonic() - start,
               "settings": {k: v for k, v in vars(args).items() if k not in ("out", "entry")}}
    figures["timing_result"] = figures["load_monitor"]["timing_result"] and start_load <= cores
    if not figures["timing_result"]:
        print(f"NOT A RESULT: the machine was busy (load average {start_load:.2f} at the start; other processes' "
              f"cores per phase: {[round(p['other_cores_during'], 2) for p in run.phases.values()]})")
    if args.out:
        save_entries(args.out, {entry_name("serve load", parser(), args): figures}, "one run", run.loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

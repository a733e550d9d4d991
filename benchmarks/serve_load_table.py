"""docs/serving.md's load-benchmark block (`<!-- figures:serve-load -->`), rendered from
benchmarks/results/serve_load.json by benchmarks/render_docs.py: every phase's figures, @auto's goodput against the
fixed full budget, and ours against llama.cpp at 8 concurrent requests."""

from __future__ import annotations

from render_tables import CPU, Results, entry, source, table

ENTRIES = (f"serve load {CPU}", f"serve load {CPU} --allow-busy")  # a run on a quiet machine first
ORDER = ("concurrent, elastic_jax @1.0", "concurrent, llama.cpp @1.0", "low load, @auto", "high load, @auto",
         "high load, @1.0")  # the phases' names, less the concurrency before "concurrent"


def pick(results: Results) -> tuple[str, dict]:
    """The entry shown: the quiet machine's when there is one."""
    stored = results.get("serve_load", {})
    name = next((n for n in ENTRIES if n in stored), ENTRIES[0])
    return name, entry(results, "serve_load", name)


def pair(p: dict) -> str:
    return "-" if p["p50"] is None else f"{p['p50']:,.0f} / {p['p99']:,.0f}"


def arrivals(s: dict, settings: dict) -> str:
    if s["arrival_rate"] is None:
        return f"{s['requests']} at once, {settings['concurrency']} in flight"
    return f"{s['requests']}, Poisson {s['arrival_rate']:.2f}/s"


def served(s: dict) -> str:
    return ", ".join(f"{model.split('@')[-1] if '@' in model else 'llama.cpp'} x{n}"
                     for model, n in sorted(s["served_by"].items(), reverse=True))


def load_cell(s: dict) -> str:
    before, after = s["loadavg_1min"]
    return f"{before:.2f}-{after:.2f} (others {s['other_cores_during']:.2f})"


def rows(f: dict) -> list[list[str]]:
    out = []
    rank = lambda name: next(i for i, end in enumerate(ORDER) if name.endswith(end))
    for name in sorted(f["phases"], key=rank):
        s = f["phases"][name]
        phase, model = name.split(", ", 1)
        out.append([phase, model, arrivals(s, f["settings"]), f"{s['completed']}",
                    f"{s['request_throughput']:.2f}", f"{s['output_throughput']:,.1f}", f"{s['goodput']:.2f}",
                    pair(s["ttft_ms"]), pair(s["tpot_ms"]), served(s), load_cell(s)])
    return out


def goodput_line(f: dict) -> str:
    auto, full = (f["phases"].get(k, {}).get("goodput") for k in ("high load, @auto", "high load, @1.0"))
    if auto is None or full is None:
        return "- The high-load phases did not run."
    if not full:
        return (f"- At high load, `@auto`'s goodput is **{auto:.2f} req/s** and the fixed full budget's 0 (no `@1.0` "
                f"request met the SLO; goal: `@auto` >= 1.5x `@1.0`).")
    return (f"- At high load, `@auto`'s goodput is **{f['goodput_ratio']:.2f}x** the fixed full budget's ({auto:.2f} "
            f"against {full:.2f} req/s; goal >= 1.5x).")


def verdict(f: dict) -> list[str]:
    peer = "-" if f["throughput_ratio"] is None else f"{f['throughput_ratio']:.2f}x"
    high = f["phases"].get("high load, @auto", {}).get("auto_changes", [])
    changes = "; ".join(f"`{c}`" for c in high) or "none"
    return [goodput_line(f), f"- `@auto`'s budget changes in its high-load phase, as the server logged them: "
            f"{changes} ({len(f['auto_changes'])} in the whole run, warm-up included).",
            f"- At low load, `@auto` served {', '.join(f['low_load_served'] or ['-'])} (goal: the full budget).",
            f"- At {f['settings']['concurrency']} concurrent requests, our output throughput is **{peer}** "
            f"llama.cpp's (goal > 1x)."]


def rates(s: dict) -> str:
    """How the Poisson phases' arrival rates were set."""
    if s["low_rate"] or s["high_rate"]:
        return "arrival rates as given"
    return f"low and high load arrive at {s['low_load']:g}x and {s['high_load']:g}x the capacity phase 1 measured"


def serve_load(results: Results) -> str:
    name, e = pick(results)
    f = e["figures"]
    s = f["settings"]
    warning = [] if f["timing_result"] else [
        f"**Not a result:** other processes kept the machine busy during this run (load average "
        f"{f['load_monitor']['loadavg_1min_at_start']:.2f} at its start on {f['load_monitor']['cores']} cores); the "
        f"figures show what the benchmark reports, not how fast the servers are.", ""]
    head = ["phase", "server", "requests", "done", "req/s", "tok/s", "goodput req/s", "TTFT p50 / p99 ms",
            "TPOT p50 / p99 ms", "served by", "load avg (others' cores)"]
    return "\n".join([
        f"{source(e)}", "", *warning,
        f"SLO: TTFT <= {s['slo_ttft_ms']:g} ms and TPOT <= {s['slo_tpot_ms']:g} ms; {s['prompt_len']} prompt "
        f"tokens and {s['max_tokens']} output tokens per request; {rates(s)}. The whole run took "
        f"{f['run_s']:.0f} s.", "",
        table(head, rows(f)), "", *verdict(f)])

"""Benchmark the SSD scan on CPU: chunked XLA vs the step-by-step reference vs the transformers NemotronH chunk scan.

Reports forward and forward+backward tokens/s (best of several runs), their ratios, and the XLA-reported temp
buffer size of the compiled fwd+bwd program (`compiled.memory_analysis().temp_size_in_bytes`) to show that memory
grows linearly with seqlen.

  python benchmarks/ssd.py --seqlens 512 2048 8192 [--out benchmarks/results/ssd.json]

`--out` stores the rows for the docs (then `python benchmarks/render_docs.py`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from timing import add_out_arguments, entry_name, load_range, load_text, save_entries

from elastic_jax.kernels.ssd import ssd


def timeit(fn: Callable[[], object], repeats: int, min_time: float = 0.0) -> float:
    """Best (minimum) seconds of fn() over `repeats` timed calls (at least until min_time total), after a warm-up.

    The minimum is the estimate least disturbed by other processes on a shared machine.
    """
    fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return min(times)


def make_inputs(b: int, seqlen: int, h: int, p: int, g: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic magnitudes: dt = softplus(N(0,1) - 1), A in [-8, -0.5]."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return {
        "x": f(b, seqlen, h, p),
        "dt": np.log1p(np.exp(f(b, seqlen, h) - 1.0)).astype(np.float32),
        "A": -rng.uniform(0.5, 8.0, (h,)).astype(np.float32),
        "B": f(b, seqlen, g, n),
        "C": f(b, seqlen, g, n),
        "D": f(h),
    }


def jax_fns(impl: str, chunk: int) -> tuple[Callable, Callable]:
    """Jitted forward and forward+backward (grad of sum(y) wrt x, dt, A, B, C, D) for one implementation."""

    def fwd(a):
        return ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], chunk_size=chunk, impl=impl)

    def loss(a):
        return jnp.sum(fwd(a))

    return jax.jit(fwd), jax.jit(jax.value_and_grad(loss))


def torch_fwd(inputs: dict[str, np.ndarray], chunk: int) -> Callable[[], object] | None:
    """Forward of transformers' `mamba2_chunk_scan` (the NemotronH CPU path), or None if unavailable."""
    try:
        import torch
        from transformers.models.nemotron_h.modeling_nemotron_h import mamba2_chunk_scan
    except ImportError:
        return None
    t = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}

    def run() -> object:
        with torch.inference_mode():
            return mamba2_chunk_scan(
                t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk, D=t["D"],
                dt_softplus=False, dt_limit=(0.0, float("inf")),
            )  # fmt: skip

    return run


def temp_bytes(fn: Callable, args: dict[str, jax.Array]) -> int:
    """Temp buffer bytes XLA reports for the compiled program (excludes arguments and outputs)."""
    mem = fn.lower(args).compile().memory_analysis()
    return int(mem.temp_size_in_bytes) if mem is not None else -1


def save(args: argparse.Namespace, parser: argparse.ArgumentParser, rows: dict, loads: list[float]) -> None:
    """Store every row (tokens/s, their ratios, temp memory; NaN as null) in the results file `--out`."""
    clean = lambda v: None if v != v else float(v)  # noqa: E731  (NaN: not measured)
    names = {"xla_fwd": "x_f", "ref_fwd": "r_f", "hf_fwd": "h_f", "xla_fb": "x_fb", "ref_fb": "r_fb",
             "xla_mem_mib": "mem_x", "ref_mem_mib": "mem_r"}
    out = {}
    for seqlen, row in rows.items():
        out[str(seqlen)] = {name: clean(row[key]) for name, key in names.items()}
        out[str(seqlen)].update(fwd_xla_over_ref=clean(row["x_f"] / row["r_f"]),
                                fb_xla_over_ref=clean(row["x_fb"] / row["r_fb"]),
                                fwd_xla_over_hf=clean(row["x_f"] / row["h_f"]))
    results = [{"load": loads}]
    print(f"load {load_range(results)} over the run")
    save_entries(args.out, {entry_name("ssd", parser, args): {"rows": out, "spread": ""}},
                 f"best of {args.repeats} timed calls, at least {args.min_time:g} s of calls per figure", results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="keep timing until this many seconds accumulated")
    ap.add_argument("--impl", default="xla", help="implementation compared against the reference")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) step-by-step reference")
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers comparison")
    add_out_arguments(ap)
    args = ap.parse_args()
    load_start = os.getloadavg()[0]

    print(f"jax {jax.__version__} backend={jax.default_backend()} cpus={os.cpu_count()} load={os.getloadavg()}")
    print(
        f"B={args.batch} H={args.heads} P={args.head_dim} N={args.state} G={args.groups} chunk={args.chunk} "
        f"impl={args.impl}; throughput in tokens/s (batch*seqlen/best time); mem = XLA temp bytes of fwd+bwd"
    )
    try:
        import torch

        print(f"torch {torch.__version__} threads={torch.get_num_threads()}")
    except ImportError:
        pass
    header = (
        f"{'L':>6} | {'xla fwd':>10} {'ref fwd':>10} {'hf fwd':>10} {'thr':>3} | {'xla f+b':>10} {'ref f+b':>10} | "
        f"{'fwd x/ref':>9} {'f+b x/ref':>9} {'fwd x/hf':>8} | {'xla mem MiB':>11} {'ref mem MiB':>11}"
    )
    print(header)
    print("-" * len(header))
    fmt = lambda v: f"{v:10.3g}" if v == v else f"{'-':>10}"
    fwd_x, fb_x = jax_fns(args.impl, args.chunk)
    fwd_r, fb_r = jax_fns("reference", args.chunk)
    rows = {}
    for seqlen in args.seqlens:  # all JAX timings first: torch's OpenMP threads must not compete with XLA's
        np_in = make_inputs(args.batch, seqlen, args.heads, args.head_dim, args.groups, args.state)
        a = {k: jnp.asarray(v) for k, v in np_in.items()}
        tokens = args.batch * seqlen
        block = lambda f, a=a: lambda: jax.block_until_ready(f(a))
        row = {"x_f": tokens / timeit(block(fwd_x), args.repeats, args.min_time)}
        row["x_fb"] = tokens / timeit(block(fb_x), args.repeats, args.min_time)
        row["mem_x"] = temp_bytes(fb_x, a) / 2**20
        row["r_f"] = row["r_fb"] = row["mem_r"] = float("nan")
        if not args.no_reference:
            row["r_f"] = tokens / timeit(block(fwd_r), max(2, args.repeats // 2))
            row["r_fb"] = tokens / timeit(block(fb_r), max(2, args.repeats // 2))
            row["mem_r"] = temp_bytes(fb_r, a) / 2**20
        rows[seqlen] = row
    for seqlen, row in rows.items():
        h_f, threads = float("nan"), 0
        hf = None if args.no_torch else torch_fwd(make_inputs(args.batch, seqlen, args.heads, args.head_dim,
                                                                args.groups, args.state), args.chunk)  # fmt: skip
        if hf is not None:  # best over torch thread counts: 2 OpenMP threads degrade badly on a loaded machine
            import torch

            for t in sorted({1, os.cpu_count() or 1}):
                torch.set_num_threads(t)
                speed = args.batch * seqlen / timeit(hf, args.repeats, args.min_time)
                if threads == 0 or speed > h_f:
                    h_f, threads = speed, t
        row["h_f"] = h_f
        print(
            f"{seqlen:>6} | {fmt(row['x_f'])} {fmt(row['r_f'])} {fmt(h_f)} {threads:>3} | {fmt(row['x_fb'])} "
            f"{fmt(row['r_fb'])} | {row['x_f'] / row['r_f']:9.2f} {row['x_fb'] / row['r_fb']:9.2f} "
            f"{row['x_f'] / h_f:8.2f} | {row['mem_x']:11.1f} {row['mem_r']:11.1f} | {load_text()}",
            flush=True,
        )
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")
    if args.out:
        save(args, ap, rows, [load_start, os.getloadavg()[0]])


if __name__ == "__main__":
    from elastic_jax import tune_process

    tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

"""Nested self-speculative decoding at batch 1 on reasoning prompts: the acceptance rate per budget pair, and the
speed-up of the full budget drafted by a smaller one over plain decoding of the full budget, measured in one run.

Without --checkpoint the model is a random `--config` parent (default: small) with an untrained router over budgets
of active parameters (benchmarks/decode.py): its budgets agree on next to nothing, so its acceptance says nothing
about a trained checkpoint; what it does measure is the cost of a round (k draft steps and one verification of k+1
positions) against one plain token: the break-even, the tokens a round must make to pay for itself. Speed-up =
tokens per round / break-even. With --checkpoint (a trained elastic checkpoint) acceptance and speed-up are real.

Greedy decoding (the output must equal plain decoding's; the run checks it). Both sides are timed end to end per
prompt (prefill and decode), in turns, `--repeats` rounds, medians compared; the other processes' load is
measured before and during timing (elastic_jax/inference/idle.py) and the run refuses to time on a machine busier
than --max-load cores unless --allow-busy (the JSON then says the figures are not a result).
Usage: python benchmarks/speculative.py [--checkpoint C | --config small] [--draft 0.4] [--k 2,4] [--new 64]
    [--prompts 4] [--repeats 3] [--allow-busy] [--out benchmarks/results/speculative.json]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from decode import random_engine  # noqa: E402  (a sibling script, like timing.py)
from timing import add_out_arguments, entry_name, interleaved_times, load_text, save_entries

import elastic_jax as ej
from elastic_jax.data import ReasoningTaskConfig, encode_prompt, eval_prompts
from elastic_jax.experiment import load_experiment
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.idle import LoadMonitor, LoadWindow
from elastic_jax.inference.speculative import SpeculativeStats, speculative_generate


def reasoning_prompts(engine: Engine, count: int, config: str) -> list[list[int]]:
    """The first `count` held-out problems of the checkpoint's reasoning task (`config`'s, for a random model)."""
    section = ((engine.meta.get("experiment") or {}).get("data") or {}).get("reasoning")
    section = dict(section or load_experiment(config).data.reasoning)
    task = ReasoningTaskConfig.from_dict(section)
    return [encode_prompt(example, engine.tokenizer) for example in eval_prompts(count, task)]


def pair_acceptance(engine: Engine, prompts: list[list[int]], target: float, draft: float, k: int, new: int
                    ) -> tuple[dict, bool]:
    """Acceptance of `draft` for `target` over the prompts one at a time (greedy), and whether every output equals
    plain decoding's."""
    total, same = None, True
    for prompt in prompts:
        got, stats = speculative_generate(engine, [prompt], target, draft, k, new)
        same &= got == engine.generate([prompt], target, new)
        total = stats if total is None else SpeculativeStats(
            target, draft, k, total.rounds + stats.rounds, total.accepted + stats.accepted,
            total.new_tokens + stats.new_tokens)
    return total.as_dict(), same


def pairs_of(budgets: tuple[float, ...]) -> list[tuple[float, float]]:
    """(target, draft) for every trained budget drafted by every smaller one."""
    return [(t, d) for t in budgets for d in budgets if d < t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="elastic checkpoint (default: a random --config parent)")
    parser.add_argument("--config", default="small")
    parser.add_argument("--budgets", default="1.0,0.7,0.4", help="budgets of the random parent's router")
    parser.add_argument("--draft", type=float, default=0.4, help="the draft budget timed against the full budget")
    parser.add_argument("--k", default="2,4", help="draft tokens per round to measure, comma-separated")
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="reasoning prompts (batch 1, one after another)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timed-pair-only", action="store_true",
                        help="measure acceptance only for the timed pair (full budget drafted by --draft)")
    parser.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1),
                        help="other processes' load (cores) at which timing stops being a result")
    parser.add_argument("--allow-busy", action="store_true", help="time on a busy machine (marked not a result)")
    add_out_arguments(parser)
    args = parser.parse_args()
    monitor = LoadMonitor(args.max_load, args.allow_busy)
    ks = [int(k) for k in args.k.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    engine = Engine.load(args.checkpoint) if args.checkpoint else random_engine(args.config, budgets)
    full = max(engine.budgets)
    prompts = reasoning_prompts(engine, args.prompts, args.config)
    print(f"model {args.checkpoint or f'random {args.config}'}: {ej.count_params(engine.cfg)[0] / 1e6:.1f}M "
          f"parameters, budgets {engine.budgets}; {len(prompts)} reasoning prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, {args.new} new tokens each, batch 1, greedy", flush=True)

    acceptance = {}
    pairs = [(full, args.draft)] if args.timed_pair_only else pairs_of(engine.budgets)
    for target, draft in pairs:
        for k in ks:
            stats, same = pair_acceptance(engine, prompts, target, draft, k, args.new)
            acceptance[f"{target:g}<-{draft:g} k={k}"] = {**stats, "identical_to_plain": same}
            print(f"acceptance {target:g} drafted by {draft:g}, k={k}: {stats['acceptance_rate']:.3f} "
                  f"({stats['accepted']}/{stats['drafted']}), {stats['tokens_per_round']:.2f} tokens per round, "
                  f"output identical to plain: {same} | {load_text()}", flush=True)

    monitor.quiet_check()
    steps = {"plain": lambda: [engine.generate([p], full, args.new) for p in prompts]}
    for k in ks:
        steps[f"k={k}"] = lambda k=k: [speculative_generate(engine, [p], full, args.draft, k, args.new)
                                       for p in prompts]
    window = LoadWindow().start()
    start = time.perf_counter()
    times = interleaved_times(steps, warmup=1, repeats=args.repeats)
    monitor.timed(window.stop(), f"{len(steps)} decoders, {time.perf_counter() - start:.0f} s")
    plain = float(np.median(times["plain"]))
    tokens = sum(len(engine.generate([p], full, args.new)[0]) for p in prompts)
    timing = {"plain_seconds": plain, "plain_tokens_per_s": tokens / plain}
    print(f"plain {full:g}: {tokens / plain:.1f} tokens/s ({plain:.2f} s for {tokens} tokens) | {load_text()}")
    for k in ks:
        spec = float(np.median(times[f"k={k}"]))
        rate = acceptance[f"{full:g}<-{args.draft:g} k={k}"]
        break_even = rate["tokens_per_round"] * spec / plain  # the tokens per round at which the two are equal
        timing[f"k={k}"] = {"seconds": spec, "tokens_per_s": tokens / spec, "speedup": plain / spec,
                            "tokens_per_round": rate["tokens_per_round"], "break_even_tokens_per_round": break_even}
        print(f"speculative {full:g} drafted by {args.draft:g}, k={k}: {tokens / spec:.1f} tokens/s, "
              f"speed-up {plain / spec:.2f}x over plain (goal >= 1.3x) at {rate['tokens_per_round']:.2f} tokens per "
              f"round; break-even {break_even:.2f} tokens per round | {load_text()}", flush=True)
    load = monitor.record()
    print(f"other processes' load: {load['other_load_before']:.2f} cores before timing, "
          f"{load['other_load_during_max']:.2f} during; timing is a result: {load['timing_result']}")
    if args.out:
        figures = {"acceptance": acceptance, "timing": timing, "load_monitor": load,
                   "model": args.checkpoint or f"random {args.config} (untrained: acceptance is not meaningful)",
                   "prompts": len(prompts), "new_tokens": args.new}
        save_entries(args.out, {entry_name("speculative decoding", parser, args): figures}, f"{args.repeats}",
                     [{"load": [load["loadavg_1min_before"], load["loadavg_1min_after"]]}])


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

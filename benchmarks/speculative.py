"""Nested self-speculative decoding at batch 1 on reasoning prompts: the acceptance rate per budget pair, the cost of
a round (k draft steps and one verification of k+1 positions) in plain decode steps of the full budget, and the
speed-up over plain decoding, all measured in one run.

Decoding only is timed (each prompt is fed first, untimed: prefill is the same work for both): plain decoding of
each timed pair's target budget and of the full budget, and each pair's speculative decoding, in turns, `--repeats`
rounds, medians compared. Cost of a round = (speculative seconds / rounds) / (plain full-budget seconds / token);
speed-up over the full budget = tokens per round / that cost; `speedup_vs_target` compares with plain decoding of
the pair's own target budget.

Without --checkpoint the model is a random `--config` parent (default: small) with an untrained router over budgets
of active parameters (benchmarks/decode.py): its budgets agree on next to nothing (about 1 token per round), so
only the cost of a round means anything; `--acceptance 0.93,1.0` then also gives the speed-up a checkpoint with that
acceptance rate would get, tokens per round = (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, independent
acceptances). With --checkpoint (a trained elastic checkpoint) acceptance and speed-up are measured.

Greedy decoding (the output must equal plain decoding's; the run checks it). The other processes' load is
measured before and during timing (elastic_jax/inference/idle.py) and the run refuses to time on a machine busier
than --max-load cores unless --allow-busy (the JSON then says the figures are not a result).
Usage: python benchmarks/speculative.py [--checkpoint C | --config small] [--pairs 1.0<-0.4,0.7<-0.4] [--k 2,4]
    [--new 64] [--prompts 4] [--repeats 3] [--acceptance 0.93,1.0] [--allow-busy]
    [--out benchmarks/results/speculative.json]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from decode import random_engine  # noqa: E402  (a sibling script, like timing.py)
from timing import add_out_arguments, entry_name, load_text, save_entries

import elastic_jax as ej
from elastic_jax.data import ReasoningTaskConfig, encode_prompt, eval_prompts
from elastic_jax.experiment import load_experiment
from elastic_jax.inference import decoder, speculative
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


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """"1.0<-0.4,0.7<-0.4" -> [(1.0, 0.4), (0.7, 0.4)]."""
    out = []
    for item in text.split(","):
        target, sep, draft = item.partition("<-")
        if not sep:
            raise SystemExit(f"--pairs: {item!r} is not target<-draft (e.g. 1.0<-0.4)")
        out.append((float(target), float(draft)))
    return out


def decode_seconds(engine: Engine, prompts: list[list[int]], new: int, pair: tuple[float, float] | None, k: int,
                   plain_budget: float) -> tuple[float, int]:
    """Seconds decoding `new` tokens per prompt (one at a time, each fed first, untimed) and the decode steps taken:
    plain decoding of `plain_budget` (steps = tokens), or speculative decoding of `pair` (steps = rounds)."""
    seconds, steps = 0.0, 0
    for prompt in prompts:
        if pair is None:
            state = engine.start(plain_budget, [prompt], engine.check_request([prompt], new))
            jax.block_until_ready(state.logits)
            start = time.perf_counter()
            made = engine.decode(state, new, stop_ids=(engine.cfg.eos_token_id,))
            seconds, steps = seconds + time.perf_counter() - start, steps + len(made[0])
            continue
        capacity = decoder.capacity_for(len(prompt) + new + k, engine.cfg.max_position_embeddings)
        batch = speculative.start(engine, [prompt], *pair, k, capacity)
        jax.block_until_ready(batch.target.caches)
        start = time.perf_counter()
        _, stats = speculative.decode(engine, batch, new, stop_ids=(engine.cfg.eos_token_id,))
        seconds, steps = seconds + time.perf_counter() - start, steps + sum(stats.rounds)
    return seconds, steps


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """Tokens a round makes when each draft is accepted with probability `acceptance`, independently."""
    return float(k + 1) if acceptance >= 1.0 else (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def time_pairs(engine: Engine, prompts: list[list[int]], pairs: list[tuple[float, float]], ks: list[int],
               args: argparse.Namespace, acceptance: dict) -> dict:
    """Plain decoding of each target and the full budget against each pair's speculative decoding, in turns."""
    full = max(engine.budgets)
    targets = sorted({full, *(t for t, _ in pairs)}, reverse=True)
    steps = {f"plain {b:g}": (lambda b=b: decode_seconds(engine, prompts, args.new, None, 0, b)) for b in targets}
    for target, draft in pairs:
        for k in ks:
            steps[f"{target:g}<-{draft:g} k={k}"] = (
                lambda p=(target, draft), k=k: decode_seconds(engine, prompts, args.new, p, k, 0.0))
    counts: dict[str, int] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats + 1):  # the first turn compiles; the others take turns, so load hits all alike
        for name, f in steps.items():
            seconds, counts[name] = f()
            times[name].append(seconds)
    per_step = {name: float(np.median(t[1:])) / counts[name] for name, t in times.items()}
    plain = per_step[f"plain {full:g}"]
    timing = {"plain": {f"{b:g}": {"ms_per_token": 1e3 * per_step[f"plain {b:g}"],
                                   "cost_in_full_steps": per_step[f"plain {b:g}"] / plain} for b in targets}}
    for target, draft in pairs:
        for k in ks:
            name = f"{target:g}<-{draft:g} k={k}"
            cost = per_step[name] / plain
            made = acceptance[name]["tokens_per_round"]
            timing[name] = {"ms_per_round": 1e3 * per_step[name], "round_cost_in_full_steps": cost,
                            "tokens_per_round": made, "speedup": made / cost,
                            "speedup_vs_target": made * per_step[f"plain {target:g}"] / per_step[name],
                            "projected": {f"{a:g}": expected_tokens_per_round(a, k) / cost
                                          for a in args.acceptance}}
            print(f"{name}: a round costs {cost:.2f} plain {full:g} steps ({1e3 * per_step[name]:.1f} ms) and made "
                  f"{made:.2f} tokens: {made / cost:.2f}x plain {full:g}, "
                  f"{timing[name]['speedup_vs_target']:.2f}x plain {target:g}; at acceptance "
                  + ", ".join(f"{a}: {v:.2f}x" for a, v in timing[name]["projected"].items())
                  + f" | {load_text()}", flush=True)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="elastic checkpoint (default: a random --config parent)")
    parser.add_argument("--config", default="small")
    parser.add_argument("--budgets", default="1.0,0.7,0.4", help="budgets of the random parent's router")
    parser.add_argument("--pairs", default="1.0<-0.4,1.0<-0.7,0.7<-0.4", help="target<-draft pairs to time")
    parser.add_argument("--k", default="2,4", help="draft tokens per round to measure, comma-separated")
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="reasoning prompts (batch 1, one after another)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--acceptance", default="0.93,1.0",
                        help="acceptance rates to project the speed-up at (a random model accepts next to nothing)")
    parser.add_argument("--timed-pair-only", action="store_true",
                        help="measure acceptance only for the timed pairs (not every pair of trained budgets)")
    parser.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1),
                        help="other processes' load (cores) at which timing stops being a result")
    parser.add_argument("--allow-busy", action="store_true", help="time on a busy machine (marked not a result)")
    add_out_arguments(parser)
    args = parser.parse_args()
    args.acceptance = [float(a) for a in args.acceptance.split(",")]
    monitor = LoadMonitor(args.max_load, args.allow_busy)
    ks = [int(k) for k in args.k.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    engine = Engine.load(args.checkpoint) if args.checkpoint else random_engine(args.config, budgets)
    prompts = reasoning_prompts(engine, args.prompts, args.config)
    print(f"model {args.checkpoint or f'random {args.config}'}: {ej.count_params(engine.cfg)[0] / 1e6:.1f}M "
          f"parameters, budgets {engine.budgets}; {len(prompts)} reasoning prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, {args.new} new tokens each, batch 1, greedy", flush=True)

    timed_pairs = parse_pairs(args.pairs)
    acceptance = {}
    for target, draft in (timed_pairs if args.timed_pair_only else sorted({*pairs_of(engine.budgets), *timed_pairs})):
        for k in ks:
            stats, same = pair_acceptance(engine, prompts, target, draft, k, args.new)
            acceptance[f"{target:g}<-{draft:g} k={k}"] = {**stats, "identical_to_plain": same}
            print(f"acceptance {target:g} drafted by {draft:g}, k={k}: {stats['acceptance_rate']:.3f} "
                  f"({stats['accepted']}/{stats['drafted']}), {stats['tokens_per_round']:.2f} tokens per round, "
                  f"output identical to plain: {same} | {load_text()}", flush=True)

    monitor.quiet_check()
    window = LoadWindow().start()
    start = time.perf_counter()
    timing = time_pairs(engine, prompts, timed_pairs, ks, args, acceptance)
    monitor.timed(window.stop(), f"{len(timing)} decoders, {time.perf_counter() - start:.0f} s")
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

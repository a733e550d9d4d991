"""Cost of the joint elastic step: static-slice mode vs mask mode vs the three sliced single-budget steps.

All steps are the same jitted training step (teacher forward, student forward/backward, AdamW); only the
set of budgets and how each is computed differ. The budgets' architectures are those a router picks (random
router weights, scaled so that its argmax is decisive). All five steps take turns, so background load hits
each alike; each figure is the median over --repeats warm calls. Prints seconds per step and the two ratios of
the issue, static joint / sum of single sliced steps and static joint / mask-mode joint, in each of
--processes fresh processes, then the median of each ratio over them.
Usage: python benchmarks/elastic_step.py [--config small --batch 4 --seq-len 256 --metric total_params]
    [--out benchmarks/results/elastic_step.json]   (then `python benchmarks/render_docs.py`)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from timing import (
    add_out_arguments,
    add_step_arguments,
    entry_name,
    in_fresh_processes,
    interleaved_times,
    load_range,
    load_text,
    median_of,
    median_result,
    report,
    save_entries,
)

import elastic_jax as ej
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.experiment import TrainConfig
from elastic_jax.train.elastic_step import JointLossConfig, make_elastic_optimizer, make_elastic_step
from elastic_jax.train.state import TrainState

BUDGETS = (1.0, 0.7, 0.4)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One process: every step compiled, warmed up and timed in turns; prints and returns its figures."""
    load_start = os.getloadavg()[0]
    cfg = ej.load_config(args.config)
    router = Router(cfg, RouterConfig(budgets=BUDGETS, metric=args.metric))
    model = ej.init_params(cfg, 0)
    router_params = jax.tree.map(lambda x: x * 100.0, router.init(jax.random.PRNGKey(args.router_seed)))
    specs = tuple(router.spec_for(router_params, b) for b in BUDGETS)
    optimizer, schedule = make_elastic_optimizer(TrainConfig(total_steps=100, warmup_steps=1))
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(5, 250, (args.batch, args.seq_len)), jnp.int32),
             "targets": jnp.asarray(rng.integers(5, 250, (args.batch, args.seq_len)), jnp.int32),
             "loss_mask": jnp.ones((args.batch, args.seq_len), jnp.float32)}
    teacher = jax.tree.map(jnp.copy, model)

    def step_of(weights, fixed) -> Callable[[], None]:
        """A closure running one jitted elastic step on its own state (donated and carried between calls)."""
        lc = JointLossConfig(weights=weights, fixed_specs=fixed)
        step, _ = make_elastic_step(cfg, router, lc, optimizer, schedule, 100)
        params = {"model": jax.tree.map(jnp.copy, model), "router": jax.tree.map(jnp.copy, router_params)}
        holder = {"state": TrainState.create(params, optimizer), "calls": 0}

        def run() -> None:
            holder["state"], metrics = step(holder["state"], teacher, batch, jax.random.PRNGKey(holder["calls"]))
            holder["calls"] += 1
            jax.block_until_ready(metrics["loss"])
        return run

    print(f"config={args.config} batch={args.batch}x{args.seq_len} budgets={BUDGETS} of {args.metric} "
          f"backend={jax.default_backend()}", flush=True)
    steps = {"mask": step_of((1.0, 1.0, 1.0), (None, None, None)), "static": step_of((1.0, 1.0, 1.0), specs)}
    for i, b in enumerate(BUDGETS):
        steps[f"single {b}"] = step_of(tuple(float(i == j) for j in range(len(BUDGETS))), specs)
    times = {name: float(np.median(t)) for name, t in interleaved_times(steps, args.warmup, args.repeats).items()}
    print(f"  joint, mask mode:   {times['mask']:.3f} s | {load_text()}")
    print(f"  joint, static mode: {times['static']:.3f} s | {load_text()}")
    actives, totals = [], []
    for b, spec in zip(BUDGETS, specs):
        total, active = ej.count_params(spec.apply_to(cfg))
        actives.append(active)
        totals.append(total)
        print(f"  single sliced step, budget {b}: {times[f'single {b}']:.3f} s  "
              f"({total / 1e6:.1f}M params, {active / 1e6:.1f}M active) | {load_text()}")
    singles = sum(times[f"single {b}"] for b in BUDGETS)
    # Mask mode runs every student at full size; static mode's students are only as big as their architectures.
    active_share = sum(actives) / (len(BUDGETS) * ej.count_params(cfg)[1])
    result = {"static_over_singles": times["static"] / singles, "static_over_mask": times["static"] / times["mask"],
              "static_s": times["static"], "mask_s": times["mask"], "singles_s": singles, "active_share": active_share,
              "total_m": [t / 1e6 for t in totals], "active_m": [a / 1e6 for a in actives]}
    print(f"  students' active parameters / {len(BUDGETS)} full students = {active_share:.2f}  "
          "(static / mask if cost followed active parameters and the teacher and optimizer cost nothing)")
    print(f"  static joint / sum of single sliced steps = {result['static_over_singles']:.2f}  (target <= 1.15)")
    print(f"  static joint / mask-mode joint            = {result['static_over_mask']:.2f}  (target <= 0.80) | "
          f"{load_text()}", flush=True)
    return report(result, load_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_step_arguments(parser, warmup_help="calls before timing (the first compiles)")
    parser.add_argument("--router-seed", type=int, default=1, help="seed of the random router picking the specs")
    parser.add_argument("--metric", default="total_params", choices=("total_params", "active_params", "memory"),
                        help="what the budgets are fractions of (the router's resource metric)")
    add_out_arguments(parser)
    args = parser.parse_args()
    results = in_fresh_processes(args.processes, __file__, sys.argv[1:]) if args.processes > 1 else [measure(args)]
    figures = {k: median_result(results, "static_over_mask")[k] for k in ("static_s", "mask_s", "singles_s")}
    for key, target in (("static_over_singles", 1.15), ("static_over_mask", 0.80)):
        figures[key], each = median_of(results, key)
        figures[f"per_process_{key}"] = [r[key] for r in results]
        print(f"{key.replace('_', ' ')}: median {figures[key]:.2f} over {len(results)} processes ({each}); "
              f"target <= {target:.2f}; load {load_range(results)}")
    print(f"students' active parameters / {len(BUDGETS)} full students: {results[0]['active_share']:.2f}")
    print("(each single step computes the teacher forward too, as the joint step does once)")
    if args.out:
        spread = ", ".join(f"static {r['static_s']:.3f} s / mask {r['mask_s']:.3f} s" for r in results)
        figures.update(total_m=results[0]["total_m"], active_m=results[0]["active_m"], spread=spread)
        save_entries(args.out, {entry_name("elastic step", parser, args): figures}, f"{args.repeats} calls of each "
                     f"step in turns after {args.warmup} warm-up calls, median per step, in {len(results)} fresh "
                     "processes; median ratios", results)


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

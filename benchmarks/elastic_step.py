"""Cost of the joint elastic step: static-slice mode vs mask mode vs the three sliced single-budget steps.

All steps are the same jitted training step (teacher forward, student forward/backward, AdamW); only the
set of budgets and how each is computed differ. Prints seconds per step and the two ratios of the issue:
static joint / sum of single sliced steps, and static joint / mask-mode joint.
Usage: python benchmarks/elastic_step.py [--config small --batch 4 --seq-len 256 --metric total_params]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import elastic_jax as ej
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.train.config import TrainConfig
from elastic_jax.train.elastic_step import JointLossConfig, make_elastic_optimizer, make_elastic_step
from elastic_jax.train.state import TrainState


def time_step(step, state, teacher, batch, repeats: int) -> float:
    state, _ = step(state, teacher, batch, jax.random.PRNGKey(0))  # compile
    jax.block_until_ready(state)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, teacher, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metric", default="total_params", choices=("total_params", "active_params", "memory"),
                        help="what the budgets are fractions of (the router's resource metric)")
    args = parser.parse_args()

    cfg = ej.load_config(args.config)
    budgets = (1.0, 0.7, 0.4)
    router = Router(cfg, RouterConfig(budgets=budgets, metric=args.metric))
    model = ej.init_params(cfg, 0)
    router_params = jax.tree.map(lambda x: x * 100.0, router.init(jax.random.PRNGKey(1)))
    specs = tuple(router.spec_for(router_params, b) for b in budgets)
    optimizer, schedule = make_elastic_optimizer(TrainConfig(total_steps=100, warmup_steps=1))
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(5, 250, (args.batch, args.seq_len)), jnp.int32),
             "targets": jnp.asarray(rng.integers(5, 250, (args.batch, args.seq_len)), jnp.int32),
             "loss_mask": jnp.ones((args.batch, args.seq_len), jnp.float32)}
    teacher = jax.tree.map(jnp.copy, model)

    def fresh() -> TrainState:
        params = {"model": model, "router": router_params}
        return TrainState.create(jax.tree.map(jnp.copy, params), optimizer)

    def measure(weights, fixed) -> float:
        lc = JointLossConfig(weights=weights, fixed_specs=fixed)
        step, _ = make_elastic_step(cfg, router, lc, optimizer, schedule, 100)
        return time_step(step, fresh(), teacher, batch, args.repeats)

    print(f"config={args.config} batch={args.batch}x{args.seq_len} budgets={budgets} of {args.metric} "
          f"backend={jax.default_backend()}", flush=True)
    mask_joint = measure((1.0, 1.0, 1.0), (None, None, None))
    print(f"  joint, mask mode:   {mask_joint:.3f} s", flush=True)
    static_joint = measure((1.0, 1.0, 1.0), specs)
    print(f"  joint, static mode: {static_joint:.3f} s", flush=True)
    singles = []
    for i, (b, s) in enumerate(zip(budgets, specs)):
        singles.append(measure(tuple(float(i == j) for j in range(3)), specs))
        total, active = ej.count_params(s.apply_to(cfg))
        print(f"  single sliced step, budget {b}: {singles[-1]:.3f} s  "
              f"({total / 1e6:.1f}M params, {active / 1e6:.1f}M active)", flush=True)
    print(f"static joint / sum of single sliced steps = {static_joint / sum(singles):.2f}  (target <= 1.15)")
    print(f"static joint / mask-mode joint            = {static_joint / mask_joint:.2f}  (target <= 0.80)")
    print("(each single step computes the teacher forward too, as the joint step does once)")


if __name__ == "__main__":
    main()

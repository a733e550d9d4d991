"""A MoE layer's three expert strategies (model/moe.py `choose_strategy`) at `small`'s expert shape, forward only, on
this host: for each token count, each strategy's time as a ratio to the fastest, measured in turns so that
background load hits them alike.

Usage: python benchmarks/moe_strategies.py [--tokens 1,2,4,8,16,32,64,128,256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.moe import STRATEGIES, MoE

DIM, EXPERTS, TOP_K, FFN = 512, 16, 4, 512  # configs/small.py


def program(strategy: str, tokens: int):
    """jit(params, x [1, tokens, DIM]) of one MoE layer (no shared expert work beyond its MLP) in `strategy`."""
    layer = MoE(hidden_size=DIM, num_experts=EXPERTS, top_k=TOP_K, expert_size=FFN, shared_size=8,
                strategy=strategy, target=CompileTarget(jax.default_backend()))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, tokens, DIM)), jnp.float32)
    params = layer.init(jax.random.PRNGKey(0), x)
    fn = jax.jit(lambda p, x: layer.apply(p, x)[0])
    jax.block_until_ready(fn(params, x))
    return lambda: jax.block_until_ready(fn(params, x))


def seconds(fn, calls: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = [s for s in STRATEGIES if s != "auto"]
    print(f"MoE E={EXPERTS} top-{TOP_K} D={DIM} F={FFN}; backend {jax.default_backend()}; forward; time / fastest")
    for tokens in (int(t) for t in args.tokens.split(",")):
        fns = {name: program(name, tokens) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeats):  # in turns
            for name, fn in fns.items():
                times[name].append(seconds(fn))
        med = {name: float(np.median(t)) for name, t in times.items()}
        best = min(med.values())
        print(f"tokens {tokens:4d}: " + "  ".join(f"{n} {med[n] / best:5.2f}x" for n in names)
              + f"  (fastest {min(med, key=med.get)}, {best * 1e6:.0f} us)", flush=True)


if __name__ == "__main__":
    main()

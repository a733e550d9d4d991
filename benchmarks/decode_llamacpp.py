"""Decode tokens/s at batch 1 per budget: elastic_jax's engine against llama.cpp (llama-cpp-python) on the same
weights, each budget exported f32 with `export-gguf` (llama.cpp is the runtime a user picks for local CPU inference).

The model is a random `--config` parent with an untrained router over active-parameter budgets (as in
benchmarks/decode.py), or `--checkpoint` (an elastic checkpoint). llama.cpp cannot run a model mixing dense `-` and
MoE `E` layers, so the random parent's pattern is `--pattern` (default: small's with its `-` layer made `E`).
Ours: the engine's decode after a prefill, no stop token. llama.cpp: `eval` of one token at a time after the
prompt. Both on `--threads` threads (default 2; ours: the CPU decode kernels' team), measured in turns so that
background load hits both alike.
Usage: python benchmarks/decode_llamacpp.py [--config small] [--budgets 1.0,0.7,0.4] [--new 64] [--batch 8]
    [--out benchmarks/results/decode_llamacpp.json]   (then `python benchmarks/render_docs.py`)
The measured figures are in docs/inference.md ("Against llama.cpp at batch 1").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from decode import decode_seconds, random_engine  # noqa: E402  (a sibling script, like timing.py for the others)
from llama_cpp import Llama
from timing import add_out_arguments, entry_name, load_text, save_entries

import elastic_jax as ej
from elastic_jax.convert.gguf import to_gguf
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.inference.engine import Engine
from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.cpu_gemv.build import set_threads


def llama_for(engine: Engine, budget: float, path: Path, n_ctx: int, threads: int) -> Llama:
    """The budget's nested model exported f32 to `path` and loaded in llama.cpp."""
    params, cfg = slice_params(jax.device_get(engine.params), engine.cfg, engine.arch(budget).spec)
    to_gguf(cfg, params, engine.tokenizer, path, "f32", overwrite=True)
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, logits_all=True,
                 verbose=False)  # logits_all: llama-cpp-python fills `scores` only then (a 1-token row when decoding)


def llama_seconds(llm: Llama, prompt: list[int], new: int) -> float:
    """Seconds of llama.cpp decoding `new` tokens one at a time (greedy) after evaluating the prompt."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    token = prompt[-1]
    for _ in range(new):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="small")
    parser.add_argument("--pattern", default="MEM*EMEM*EME",
                        help="model.pattern of the random parent (no '-' with 'E': llama.cpp runs one MLP kind)")
    parser.add_argument("--checkpoint", help="an elastic checkpoint (default: a random --config parent)")
    parser.add_argument("--budgets", default="1.0,0.7,0.4")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="tokens decoded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--batch", type=int, default=8, help="also ours at this batch (0: skip)")
    add_out_arguments(parser)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    budgets = [float(b) for b in args.budgets.split(",")]
    if cpu_gemv.available():  # ours on as many threads as llama.cpp's
        set_threads(args.threads)
    engine = (Engine.load(args.checkpoint) if args.checkpoint
              else random_engine(args.config, budgets, (f"model.pattern='{args.pattern}'",)))
    cfg = engine.cfg
    total, active = ej.count_params(cfg)
    print(f"parent {args.checkpoint or args.config} ({cfg.pattern}): total {total / 1e6:.1f}M active "
          f"{active / 1e6:.1f}M; backend {jax.default_backend()}; batch 1, prompt {args.prompt}, {args.new} new "
          f"tokens; llama.cpp threads {args.threads}, f32; ours on the CPU decode kernels: {cpu_gemv.available()}")
    prompt = np.random.default_rng(0).integers(5, cfg.vocab_size, args.prompt).tolist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            llm = llama_for(engine, budget, Path(tmp) / f"{budget:g}.gguf", args.prompt + args.new + 8, args.threads)
            timed = {"ours": lambda b=budget: decode_seconds(engine, b, [prompt], args.new),
                     "llama.cpp": lambda m=llm: llama_seconds(m, prompt, args.new)}
            if args.batch:
                timed[f"ours batch {args.batch}"] = lambda b=budget: decode_seconds(engine, b, [prompt] * args.batch,
                                                                                  args.new) / args.batch
            seconds: dict[str, list[float]] = {name: [] for name in timed}
            for fn in timed.values():
                fn()  # compile / warm up
            for _ in range(args.repeats):  # in turns, so background load hits both alike
                for name, fn in timed.items():
                    seconds[name].append(fn())
            tps = {name: args.new / float(np.median(s)) for name, s in seconds.items()}
            print(f"budget {budget:g}: ours {tps['ours']:.1f} tok/s, llama.cpp {tps['llama.cpp']:.1f} tok/s, "
                  f"ratio {tps['ours'] / tps['llama.cpp']:.2f}x"
                  + "".join(f"; {name} {v:.1f} tok/s" for name, v in tps.items() if name.startswith("ours batch"))
                  + f" | {load_text()}", flush=True)
            rows.append({"budget": budget, "ours": tps["ours"], "peer": tps["llama.cpp"],
                         "ratio": tps["ours"] / tps["llama.cpp"], "ours_batch": tps.get(f"ours batch {args.batch}")})
            del llm
    if args.out:
        save_entries(args.out, {entry_name("decode vs llama.cpp", parser, args): {"batch": args.batch, "rows": rows}},
                     f"median of {args.repeats} decodes of {args.new} tokens each, ours and llama.cpp in turns",
                     [{"load": [load_start, os.getloadavg()[0]]}])


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

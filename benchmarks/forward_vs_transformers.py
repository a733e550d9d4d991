"""Prefill and cached-decode throughput of elastic_jax vs transformers' NemotronH on the same weights (CPU).

The two take turns (so background load hits both alike); prints best-of-N tokens/s of each and the ratios,
in each of --processes fresh processes, then the median ratios over them.
Usage: python benchmarks/forward_vs_transformers.py [--config small] [--processes 3]
    [--out benchmarks/results/forward_vs_transformers.json]   (then `python benchmarks/render_docs.py`)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import numpy as np
import torch
from timing import add_out_arguments, compare, in_fresh_processes, load_text, report, summarise
from transformers import NemotronHForCausalLM

import elastic_jax as ej


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="small")
    parser.add_argument("--prefill-batch", type=int, default=4)
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--decode-prompt", type=int, default=16)
    parser.add_argument("--decode-new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes to measure in (median reported)")
    add_out_arguments(parser)
    args = parser.parse_args()
    results = in_fresh_processes(args.processes, __file__, sys.argv[1:]) if args.processes > 1 else [measure(args)]
    summarise(parser, args, results, {"prefill": ("prefill", ">= 2x"), "decode": ("decode", ">= 3x")},
              f"{args.repeats} calls each in turns with transformers, in {len(results)} fresh processes; median ratio")


def measure(args: argparse.Namespace) -> dict:
    """One process: prefill and decode of both, timed in turns; prints and returns the figures."""
    load_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = ej.load_config(args.config)
    params = ej.init_params(cfg, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ej.to_hf(cfg, params, tmp)
        model = NemotronHForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    total, active = ej.count_params(cfg)
    print(f"config={args.config} params total={total / 1e6:.1f}M active={active / 1e6:.1f}M "
          f"backend={jax.default_backend()} torch_threads={torch.get_num_threads()}")

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (args.prefill_batch, args.prefill_len)).astype(np.int32)
    tt = torch.from_numpy(tokens.astype(np.int64))

    def hf_prefill() -> None:
        with torch.no_grad():
            model(tt, use_cache=False)
    t_jax, t_hf, med = compare(lambda: ej.apply(cfg, params, tokens).block_until_ready(), hf_prefill, 1, args.repeats)
    prefill_ratio = t_hf / t_jax
    n = tokens.size
    prefill = {"prefill": prefill_ratio, "prefill_ours": n / t_jax, "prefill_peer": n / t_hf}
    print(f"prefill {args.prefill_batch}x{args.prefill_len}: jax {n / t_jax:,.0f} tok/s | transformers "
          f"{n / t_hf:,.0f} tok/s | ratio {prefill_ratio:.2f}x (ratio of medians {med:.2f}x) | {load_text()}")

    prompt = rng.integers(3, cfg.vocab_size, (1, args.decode_prompt)).astype(np.int32)
    never = cfg.vocab_size  # an id no model emits, so both run all steps
    tp = torch.from_numpy(prompt.astype(np.int64))

    def hf_decode() -> None:
        with torch.no_grad():
            model.generate(tp, max_new_tokens=args.decode_new, min_new_tokens=args.decode_new, do_sample=False,
                           pad_token_id=cfg.pad_token_id)
    t_jax, t_hf, med = compare(lambda: ej.generate(cfg, params, prompt, args.decode_new, eos_id=never), hf_decode, 1,
                               args.repeats)
    print(f"decode 1x{args.decode_new} (prompt {args.decode_prompt}): jax {args.decode_new / t_jax:,.1f} tok/s | "
          f"transformers {args.decode_new / t_hf:,.1f} tok/s | ratio {t_hf / t_jax:.2f}x "
          f"(ratio of medians {med:.2f}x) | {load_text()}")
    return report({**prefill, "decode": t_hf / t_jax, "decode_ours": args.decode_new / t_jax,
                   "decode_peer": args.decode_new / t_hf}, load_start)


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

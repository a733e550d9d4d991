"""Training-step throughput of elastic_jax vs transformers' NemotronH on the same weights and batch.

One step = forward, masked cross-entropy, backward, global-norm clipping and AdamW, on both sides. The two
steps take turns (so background load affects both alike); prints best-of-N tokens/s of each and the ratio, in
each of --processes fresh processes, then the median ratio over them.
Usage: python benchmarks/train_step.py [--config small] [--batch 4 --seq-len 256] [--processes 3]
On a GPU: add `--torch-device cuda` (transformers on the same GPU) and `--dtype bfloat16` (our compute dtype;
torch autocast to bfloat16), both with fp32 master weights. `--out benchmarks/results/train_step.json` stores the
figures for the docs (then `python benchmarks/render_docs.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable

import jax
import numpy as np
import torch
from timing import add_out_arguments, add_step_arguments, compare, in_fresh_processes, load_text, report, summarise
from transformers import NemotronHForCausalLM

import elastic_jax as ej
from elastic_jax.train import TrainConfig, TrainState, make_optimizer, make_train_step


def jax_step(cfg: ej.ModelConfig, params: dict, train: TrainConfig, batch: dict[str, np.ndarray]) -> Callable:
    """A closure running one jitted elastic_jax train step (state donated and carried between calls)."""
    optimizer, schedule = make_optimizer(train, params)
    holder = {"state": TrainState.create(params, optimizer)}
    step, _ = make_train_step(cfg, optimizer, schedule)
    device_batch = {k: jax.device_put(v) for k, v in batch.items()}

    def run() -> None:
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])
    return run


def torch_step(model: torch.nn.Module, train: TrainConfig, batch: dict[str, np.ndarray], device: str,
               dtype: str) -> Callable:
    """A closure running one transformers training step with torch AdamW and the same loss and clipping."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(train.b1, train.b2), eps=train.eps,
                            weight_decay=train.weight_decay)
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64)).to(device)
    targets = torch.from_numpy(batch["targets"].astype(np.int64)).to(device)
    mask = torch.from_numpy(batch["loss_mask"]).to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def run() -> None:
        with autocast:
            logits = model(inputs, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (nll * mask.flatten()).sum() / mask.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_step_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--torch-device", default="cpu", help="where transformers runs: cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype, both sides")
    add_out_arguments(parser)
    args = parser.parse_args()
    results = in_fresh_processes(args.processes, __file__, sys.argv[1:]) if args.processes > 1 else [measure(args)]
    summarise(parser, args, results, {"ratio": ("train step", ">= 1.5x")}, f"{args.repeats} steps each in turns with "
              f"transformers after {args.warmup} warm-up steps, in {len(results)} fresh processes; median ratio",
              extra=("ours_ms", "peer_ms"))


def measure(args: argparse.Namespace) -> dict:
    """One process: both steps compiled or warmed up, then timed in turns; prints and returns the figures."""
    load_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = dataclasses.replace(ej.load_config(args.config), compute_dtype=args.dtype)
    params = ej.init_params(cfg, seed=0)
    train = TrainConfig(lr=1e-4, warmup_steps=0, total_steps=1000, weight_decay=0.1, clip_norm=1.0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.seq_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones(tokens[:, 1:].shape, np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        ej.to_hf(cfg, params, tmp)
        model = NemotronHForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    total, active = ej.count_params(cfg)
    print(f"config={args.config} params total={total / 1e6:.1f}M active={active / 1e6:.1f}M "
          f"batch={args.batch}x{args.seq_len} dtype={args.dtype} backend={jax.default_backend()} "
          f"torch_device={args.torch_device} torch_threads={torch.get_num_threads()}")

    n = args.batch * args.seq_len
    hf_step = torch_step(model, train, batch, args.torch_device, args.dtype)
    t_jax, t_hf, med = compare(jax_step(cfg, params, train, batch), hf_step, args.warmup, args.repeats)
    print(f"train step {args.batch}x{args.seq_len}: jax {n / t_jax:,.0f} tok/s ({t_jax * 1e3:.0f} ms) | "
          f"transformers {n / t_hf:,.0f} tok/s ({t_hf * 1e3:.0f} ms) | ratio {t_hf / t_jax:.2f}x "
          f"(ratio of medians {med:.2f}x) | {load_text()}")
    return report({"ratio": t_hf / t_jax, "ratio_ours": n / t_jax, "ratio_peer": n / t_hf,
                   "ratio_ours_ms": t_jax * 1e3, "ratio_peer_ms": t_hf * 1e3}, load_start)


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

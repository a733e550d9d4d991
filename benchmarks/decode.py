"""Decode tokens/s per budget of one elastic model, at batch 1 and 8, against transformers on each budget's exported
weights, in one run.

Without --checkpoint the model is a random `--config` parent with a randomly initialised router over budgets of
active parameters (decode speed depends on the architecture, not on training); with --checkpoint it is that
elastic checkpoint. Ours: the engine (one parent in memory, each budget sliced inside its programs), decode timed
after a prefill, every row forced to the full count (no stop token). transformers: generate(do_sample=False) with
min_new_tokens = max_new_tokens, its decode time taken as generate(N) - generate(1). Prints tokens/s of each, their
ratio, and each budget's decode speed-up over the full model beside its share of active parameters. The speed-ups
come from a second, interleaved measurement (the budgets decode in turns, `--repeats` rounds, medians compared), so
that load from other work on a shared machine hits every budget alike.
Usage: python benchmarks/decode.py [--config small] [--budgets 1.0,0.7,0.4] [--batches 1,8] [--new 64]
    [--out benchmarks/results/decode.json]   (then `python benchmarks/render_docs.py`)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import jax
import numpy as np
import torch
from timing import add_out_arguments, entry_name, interleaved_times, load_text, save_entries
from transformers import NemotronHForCausalLM

import elastic_jax as ej
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.inference.engine import Engine


def random_engine(config: str, budgets: list[float], overrides: tuple[str, ...] = ()) -> Engine:
    """A random parent (config + overrides) with an untrained router over active-parameter budgets (the router's
    argmax, repaired into each budget's tolerance, gives every budget a real nested architecture)."""
    cfg = ej.load_config(config, list(overrides))
    rc = RouterConfig(budgets=tuple(budgets), metric="active_params")
    router = Router(cfg, rc)
    router_params = router.init(jax.random.PRNGKey(0))
    specs = {f"{b:g}": router.spec_for(router_params, b).to_dict() for b in budgets}
    meta = {"model": cfg.to_dict(), "elastic": {"router": dataclasses.asdict(rc), "specs": specs}}
    return Engine(cfg, {"model": ej.init_params(cfg, 0), "router": router_params}, meta)


def hf_model(engine: Engine, budget: float, tmp: str, device: str) -> NemotronHForCausalLM:
    arch = engine.arch(budget)
    params, cfg = slice_params(jax.device_get(engine.params), engine.cfg, arch.spec)
    ej.to_hf(cfg, params, tmp)
    model = NemotronHForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval().to(device)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    return model


def decode_seconds(engine: Engine, budget: float, prompts: list[list[int]], new: int) -> float:
    """Seconds of one decode of `new` tokens per row, after a prefill (programs already compiled)."""
    state = engine.start(budget, prompts, engine.check_request(prompts, new))
    jax.block_until_ready(state.logits)
    start = time.perf_counter()
    engine.decode(state, new, stop_ids=())
    return time.perf_counter() - start


def measure(engine: Engine, budget: float, prompts: list[list[int]], model, new: int, repeats: int
            ) -> tuple[float, float | None]:
    """Decode tokens/s of ours (median of `repeats`, after a compiling call) and of transformers (None without)."""
    cfg, batch = engine.cfg, len(prompts)
    decode_seconds(engine, budget, prompts, new)  # compiles
    ours = batch * new / float(np.median([decode_seconds(engine, budget, prompts, new) for _ in range(repeats)]))
    if model is None:
        return ours, None

    tokens = torch.tensor(prompts, device=model.device)

    def hf_generate(n: int) -> None:
        with torch.no_grad():
            model.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        if tokens.is_cuda:
            torch.cuda.synchronize()

    times = interleaved_times({"n": lambda: hf_generate(new), "1": lambda: hf_generate(1)}, 1, repeats)
    return ours, batch * (new - 1) / float(np.median(times["n"]) - np.median(times["1"]))


def interleaved_speeds(engine: Engine, budgets: list[float], prompts: list[list[int]], new: int, repeats: int
                       ) -> dict[float, float]:
    """Decode tokens/s per budget, the budgets taking turns in each of `repeats` rounds (median per budget)."""
    times: dict[float, list[float]] = {b: [] for b in budgets}
    for _ in range(repeats):
        for b in budgets:
            times[b].append(decode_seconds(engine, b, prompts, new))
    return {b: len(prompts) * new / float(np.median(t)) for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="small")
    parser.add_argument("--checkpoint", help="an elastic checkpoint (default: a random --config parent)")
    parser.add_argument("--budgets", default="1.0,0.7,0.4")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="tokens decoded per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="ours only")
    parser.add_argument("--torch-device", default="cpu", help="where transformers runs (cpu, cuda)")
    add_out_arguments(parser)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    budgets = [float(b) for b in args.budgets.split(",")]
    engine = Engine.load(args.checkpoint) if args.checkpoint else random_engine(args.config, budgets)
    cfg = engine.cfg
    print(f"parent {args.checkpoint or args.config}: total {ej.count_params(cfg)[0] / 1e6:.1f}M active "
          f"{ej.count_params(cfg)[1] / 1e6:.1f}M; backend {jax.default_backend()}; prompt {args.prompt}, "
          f"{args.new} new tokens per row; torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    ours: dict[tuple[float, int], float] = {}
    figures: dict[str, list] = {"rows": [], "in_turns": [], "speedups": []}
    for budget in budgets:
        arch = engine.arch(budget)
        active = ej.count_params(arch.cfg)[1] / ej.count_params(cfg)[1]
        model = None
        if not args.no_hf:
            with tempfile.TemporaryDirectory() as tmp:
                model = hf_model(engine, budget, tmp, args.torch_device)
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = rng.integers(5, cfg.vocab_size, (batch, args.prompt)).tolist()
            ours[budget, batch], hf_tps = measure(engine, budget, prompts, model, args.new, args.repeats)
            line = f"budget {budget:g} (active {active:.2f}) batch {batch}: ours {ours[budget, batch]:.1f} tok/s"
            rate = None if hf_tps is None else ours[budget, batch] / hf_tps
            if hf_tps is not None:
                line += f", transformers {hf_tps:.1f} tok/s, ratio {rate:.2f}x"
            print(f"{line} | {load_text()}", flush=True)
            figures["rows"].append({"budget": budget, "active": active, "batch": batch, "ours": ours[budget, batch],
                                    "peer": hf_tps, "ratio": rate})
    full = max(budgets)
    interleaved = {}
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = rng.integers(5, cfg.vocab_size, (batch, args.prompt)).tolist()
        interleaved[batch] = interleaved_speeds(engine, budgets, prompts, args.new, args.repeats)
        print(f"batch {batch}, budgets in turns: " + ", ".join(f"{b:g} {tps:.1f} tok/s"
                                                             for b, tps in interleaved[batch].items())
              + f" | {load_text()}", flush=True)
        figures["in_turns"] += [{"batch": batch, "budget": b, "tok_s": v} for b, v in interleaved[batch].items()]
    for budget in budgets:
        if budget == full:
            continue
        share = ej.count_params(engine.arch(budget).cfg)[1] / ej.count_params(engine.arch(full).cfg)[1]
        for batch in (int(b) for b in args.batches.split(",")):
            speedup = interleaved[batch][budget] / interleaved[batch][full]
            print(f"budget {budget:g} vs {full:g}, batch {batch}: decode speed-up {speedup:.2f}x; active-parameter "
                  f"ratio {1 / share:.2f}x; speed-up / ratio {speedup * share:.2f} (target >= 0.6) | {load_text()}")
            figures["speedups"].append({"budget": budget, "full": full, "batch": batch, "speedup": speedup,
                                        "active_ratio": 1 / share})
    if args.out:
        save_entries(args.out, {entry_name("decode per budget", parser, args): figures},
                     f"median of {args.repeats} decodes per budget; speed-ups with the budgets in turns",
                     [{"load": [load_start, os.getloadavg()[0]]}])


if __name__ == "__main__":
    ej.tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    main()

"""Every GPU measurement of the performance issue in one run, one JSON file: run it whenever a GPU is at hand.

Steps, each in its own subprocess under its own timeout (a crash, hang or out-of-memory loses only that step), the
whole suite within --budget seconds (default 690: under 12 minutes on one H100 with start-up):
  kernel_tests the compiled Pallas kernel tests (`pytest tests/kernels/test_ssd_pallas.py -k compiled`, values and
               gradients against the reference on the device): whether the kernels compile and are right.
  ssd          Pallas GPU SSD vs XLA at L = 8192 (B=4, H=32, P=64, N=128, G=1, chunk 128, fp32; docs/performance.md's
               command), forward and forward + backward tokens/s.
  train_small  `small`'s bf16 training step (8 x 1024): tokens/s and MFU.
  train_1b     `hybrid_1b`'s (1.00B parameters) bf16 training step (4 x 2048): tokens/s and MFU, with cuBLAS GEMMs
               (XLA's Triton GEMM autotuning of every shape can outlast the step's limit; docs/performance.md).
  decode       batch-1 decode tokens/s of a random `small` parent at budget 1.0.
  plan_8, plan_16   the Nano elastic step compiled for 8 and 16 x H100 with jax's mock GPU topology, where
               elastic_jax.plan offers it ("not available" otherwise).
MFU = model FLOPs per step / (step seconds * 989e12, the H100's dense bf16 peak); model FLOPs per step = 3 x the
forward FLOPs of elastic_jax.elastic.flops_per_token at the mean causal context (seq_len / 2) x tokens.
`--smoke`: the same steps at tiny shapes (Pallas in interpret mode), how it is tested on a CPU.
Usage: benchmarks/gpu_suite.sh [--out gpu_suite.json] [--smoke] [--steps ssd,train_small]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PEAK_FLOPS = 989e12  # H100 SXM dense bf16
RESULT_TAG = "GPU_SUITE_RESULT "
# Seconds each step may take on an H100 (compilation included); the suite's --budget caps their sum.
STEPS = {"kernel_tests": 75, "ssd": 120, "train_small": 150, "train_1b": 150, "decode": 90, "plan_8": 75,
         "plan_16": 75}
STEP_XLA_FLAGS = {"train_1b": "--xla_gpu_enable_triton_gemm=false"}  # added to the user's XLA_FLAGS on a GPU
SMOKE_STEP_S = 400


def _timed(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of `repeats` calls of fn (which blocks until its result is ready), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def step_ssd(smoke: bool) -> dict:
    """Pallas GPU and XLA SSD, forward and forward + backward, on the same inputs (benchmarks/ssd.py's functions)."""
    import jax
    import jax.numpy as jnp
    from ssd import jax_fns, make_inputs

    b, seqlen, h, p, n, chunk = (1, 64, 2, 16, 16, 16) if smoke else (4, 8192, 32, 64, 128, 128)
    pallas = "pallas_gpu_interpret" if smoke else "pallas_gpu"
    args = {k: jnp.asarray(v) for k, v in make_inputs(b, seqlen, h, p, 1, n).items()}
    out: dict = {"shape": {"batch": b, "seqlen": seqlen, "heads": h, "head_dim": p, "groups": 1, "state": n,
                           "chunk": chunk, "dtype": "float32"}}
    for impl in (pallas, "xla"):
        fwd, fb = jax_fns(impl, chunk)
        for name, fn in (("fwd", fwd), ("fwd_bwd", fb)):
            times = _timed(lambda fn=fn: jax.block_until_ready(fn(args)), 1, 2 if smoke else 5)
            out[f"{impl}_{name}_tok_s"] = b * seqlen / min(times)
    for name in ("fwd", "fwd_bwd"):
        out[f"pallas_over_xla_{name}"] = out[f"{pallas}_{name}_tok_s"] / out[f"xla_{name}_tok_s"]
    return out


def _model_config(name: str, smoke: bool, dtype: str):
    """(config name, ModelConfig): --smoke runs `tiny` for `small` and `hybrid_1b` shrunk to toy widths."""
    import dataclasses

    import elastic_jax as ej

    shrink = ["model.hidden_size=64", "model.mamba_num_heads=4", "model.mamba_head_dim=16", "model.mamba_n_groups=2",
              "model.ssm_state_size=16", "model.num_attention_heads=4", "model.num_key_value_heads=2",
              "model.head_dim=16", "model.intermediate_size=128", "model.chunk_size=16",
              "model.pattern='M-M*-'"] if smoke and name == "hybrid_1b" else []
    name = "tiny" if smoke and name == "small" else name
    return name + (" (shrunk)" if shrink else ""), dataclasses.replace(ej.load_config(name, shrink),
                                                                        compute_dtype=dtype)


def train_mfu(config: str, batch: int, seq_len: int, smoke: bool) -> dict:
    """One jitted training step (forward, loss, backward, clipping, AdamW; bf16 compute, fp32 master weights)."""
    import jax
    import numpy as np

    import elastic_jax as ej
    from elastic_jax.elastic import flops_per_token
    from elastic_jax.train import TrainConfig, TrainState, make_optimizer, make_train_step

    config, cfg = _model_config(config, smoke, "bfloat16")
    batch, seq_len = (2, 32) if smoke else (batch, seq_len)
    params = ej.init_params(cfg, seed=0)
    optimizer, schedule = make_optimizer(TrainConfig(lr=1e-4, warmup_steps=0, total_steps=1000), params)
    state = {"s": TrainState.create(params, optimizer)}
    step, _ = make_train_step(cfg, optimizer, schedule)
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, seq_len + 1)).astype(np.int32)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((batch, seq_len), np.float32)}
    data = {k: jax.device_put(v) for k, v in data.items()}

    def run() -> None:
        state["s"], metrics = step(state["s"], data)
        jax.block_until_ready(metrics["loss"])

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    times = _timed(run, 1, 2 if smoke else 5)
    flops = 3 * flops_per_token(cfg, max(1, seq_len // 2)) * batch * seq_len
    total, active = ej.count_params(cfg)
    return {"config": config, "batch": batch, "seq_len": seq_len, "params": total, "active_params": active,
            "first_call_s": compile_s, "step_ms_median": 1e3 * float(np.median(times)),
            "step_ms_best": 1e3 * min(times),
            "tok_s": batch * seq_len / float(np.median(times)), "model_flops_per_step": float(flops),
            "mfu": flops / (float(np.median(times)) * PEAK_FLOPS), "mfu_best": flops / (min(times) * PEAK_FLOPS),
            "peak_flops": PEAK_FLOPS}


def step_decode(smoke: bool) -> dict:
    """Batch-1 decode of a random parent at budget 1.0 (benchmarks/decode.py's engine and timing)."""
    import numpy as np
    from decode import decode_seconds, random_engine

    config, new = ("tiny", 8) if smoke else ("small", 64)
    engine = random_engine(config, [1.0])
    prompt = np.random.default_rng(0).integers(5, engine.cfg.vocab_size, (1, 16)).tolist()
    decode_seconds(engine, 1.0, prompt, new)  # compiles
    seconds = [decode_seconds(engine, 1.0, prompt, new) for _ in range(2 if smoke else 5)]
    return {"config": config, "prompt": 16, "new_tokens": new, "tok_s": new / float(np.median(seconds)),
            "tok_s_best": new / min(seconds)}


def step_plan(devices: int, smoke: bool) -> dict:
    """The Nano elastic step's plan for `devices` x H100, if elastic_jax.plan compiles GPU plans on a mock topology."""
    import elastic_jax.plan as plan_module

    sources = "".join(p.read_text() for p in Path(plan_module.__file__).parent.glob("plan*.py"))
    if "mock_gpu_topology" not in sources:
        return {"status": "not available", "why": "elastic_jax.plan does not compile on jax's mock GPU topology yet"}
    config = "tiny" if smoke else "nemotron3_nano_30b_a3b"
    result = plan_module.plan(config, f"{devices}xH100", programs=("elastic",))
    return {"config": config, "target": f"{devices}xH100", "plan": json.loads(json.dumps(result, default=str))}


def step_kernel_tests(smoke: bool) -> dict:
    """The compiled-kernel tests on this machine's device (they skip where there is none, as under --smoke)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **({} if smoke else {"JAX_PLATFORMS": "cuda"})}  # tests/conftest.py defaults to the CPU
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "compiled",
                           "tests/kernels/test_ssd_pallas.py"], cwd=root, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if " in " in line and ("passed" in line or "failed" in line
                                                                               or "skipped" in line)]
    return {"status": "ok" if proc.returncode == 0 else "failed", "summary": lines[-1] if lines else "",
            "log_tail": "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-3000:]}


def run_step(name: str, smoke: bool) -> dict:
    if name == "kernel_tests":
        return step_kernel_tests(smoke)
    if name == "ssd":
        return step_ssd(smoke)
    if name == "train_small":
        return train_mfu("small", 8, 1024, smoke)
    if name == "train_1b":
        return train_mfu("hybrid_1b", 4, 2048, smoke)
    if name == "decode":
        return step_decode(smoke)
    if name in ("plan_8", "plan_16"):
        return step_plan(int(name.split("_")[1]), smoke)
    raise ValueError(f"--step: {name!r}; allowed: {', '.join(STEPS)}")


def child(name: str, smoke: bool) -> None:
    """Run one step in this process and print its result line (an error is a result too)."""
    import elastic_jax as ej

    ej.tune_process()
    try:
        result = {"status": "ok", **run_step(name, smoke)}
    except Exception as err:  # noqa: BLE001 (the suite records any failure and goes on)
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[-2000:]}
    try:  # after the step: kernel_tests' pytest process must find the GPU's memory free
        import jax

        result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                  "xla_flags": os.environ.get("XLA_FLAGS", ""), **result}
    except Exception as err:  # noqa: BLE001
        result["device_error"] = f"{type(err).__name__}: {err}"[-500:]
    print(RESULT_TAG + json.dumps(result), flush=True)


def _spawn(name: str, smoke: bool, timeout: float) -> dict:
    """One step in a fresh process group, killed whole at `timeout` seconds."""
    argv = [sys.executable, __file__, "--step", name] + (["--smoke"] if smoke else [])
    env = dict(os.environ)
    if name in STEP_XLA_FLAGS and not smoke:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {STEP_XLA_FLAGS[name]}".strip()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=Path(__file__).parent, env=env)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return {"status": "timeout", "timeout_s": round(timeout), "log_tail": output[-1500:]}
    lines = [line for line in output.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        return {"status": "failed", "error": f"exit code {proc.returncode}, no result", "log_tail": output[-1500:]}
    return json.loads(lines[-1][len(RESULT_TAG):])


def _header(smoke: bool) -> dict:
    """When and what was measured (the device comes from the steps: this process never starts jax, so that it holds
    no GPU memory while the steps run)."""
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "elastic_jax", "benchmarks"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "smoke": smoke,
            "device": None, "commit": (commit.stdout.strip() or "unknown") + (" with changes" if dirty else ""),
            "peak_flops": PEAK_FLOPS, "steps": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_suite.json", help="the one JSON file of results (written after each step)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, Pallas in interpret mode (runs on a CPU)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    ap.add_argument("--budget", type=float, default=690.0, help="seconds for the whole suite (--smoke: 1800)")
    ap.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = ap.parse_args()
    if args.step:
        return child(args.step, args.smoke)
    names = [s for s in args.steps.split(",") if s]
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        ap.error(f"--steps: {unknown} unknown; allowed: {', '.join(STEPS)}")
    deadline = time.monotonic() + (1800.0 if args.smoke and args.budget == 690.0 else args.budget)
    report = _header(args.smoke)
    for name in names:
        left = deadline - time.monotonic()
        start = time.monotonic()
        if left < 20:
            report["steps"][name] = {"status": "skipped", "why": "the suite's time budget was spent"}
        else:
            limit = SMOKE_STEP_S if args.smoke else STEPS[name]  # a loaded CPU compiles slower than an H100 host
            report["steps"][name] = {**_spawn(name, args.smoke, min(limit, left)),
                                     "seconds": round(time.monotonic() - start, 1)}
            report["device"] = report["device"] or report["steps"][name].get("device")
        print(f"{name}: {json.dumps(report['steps'][name])[:400]}", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Does nesting work? The Nemotron Elastic table at small scale, in one command.

    python benchmarks/reproduce.py --workdir runs/reproduce [--scale default|smoke] [--jobs N]

Pretrains a parent (configs/reproduce.py) for T tokens and elastifies it into budgets 1.0 / 0.7 / 0.4 for E tokens;
for each smaller budget's deployed architecture trains a model of exactly that shape from scratch (for T + E and for
T tokens) and a Minitron-style baseline (the permuted parent pruned to that shape, distilled from the parent for E
tokens); runs the ablations as separate elastic runs from the same parent; repeats the parent, the elastic run and
the twins over three seeds. Every model is scored on the same held-out loss batches and reasoning problems.
Writes <workdir>/results.json, results.md (the table) and loss_vs_params.png / accuracy_vs_params.png.

Each row runs as its own subprocess (`--row NAME`, the same script) in <workdir>/rows/NAME, so a crash loses only
that row; a finished row has a DONE file, and rerunning the command skips finished rows and resumes the others
from their checkpoints. `--jobs N` runs independent rows side by side, each pinned to its share of the CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_rows import Row, Scale, plan, run_row  # noqa: E402

# The default scale. The parent (configs/reproduce.py: 519K parameters, every block type) learns the "medium"
# reasoning preset (2-4 operations over operands up to 20), which a model 0.4x its size trained alone does not
# match in the same tokens, unlike tiny's "easy" task. T = 1500 steps of 16 x 128 tokens (3.1M tokens) and E =
# 300 + 150 elastic steps (1.2M tokens, E/T = 0.4, stage 2 at 256 tokens) keep the whole experiment (25 runs,
# 41 evaluated models) within 90 minutes on 2 CPU cores: see STEP_SECONDS and estimate().
DEFAULT = Scale("default", pretrain_steps=1500, stage1_steps=300, stage2_steps=150, seeds=(0, 1, 2), problems=128,
                eval_batches=8)
# Smoke: every kind of row, with a 4-layer model far below `tiny`, a handful of steps, one seed, both elastic stages at
# one length and architectures fixed from the first elastic step (one joint-step compilation, no mask mode), and one
# ablation (the router-free budget search, the ablation furthest from the default path; the other knobs have their
# own tests): the test's end-to-end run.
SMOKE = Scale("smoke", pretrain_steps=6, stage1_steps=4, stage2_steps=2, seeds=(0,), problems=4, eval_batches=1,
              overrides=("model.hidden_size=16", "model.pattern=M*E-", "model.mamba_head_dim=8", "model.head_dim=8",
                         "model.ssm_state_size=8", "model.intermediate_size=32", "model.n_routed_experts=4",
                         "model.moe_intermediate_size=16", "model.moe_shared_expert_intermediate_size=16",
                         "train.global_batch=2", "train.seq_len=64", "train.eval_max_new_tokens=4",
                         "train.warmup_steps=1", "checkpoint.every_steps=1000"),
              elastic_overrides=("elastic.stage1_seq_len=64", "elastic.stage2_seq_len=64", "elastic.static_after=0.0",
                                 "elastic.importance_batches=1"), ablations=("router_free",))
SCALES = {"default": DEFAULT, "smoke": SMOKE}

# Measured on 2 CPU cores (default scale; busy-machine timings divided by the load factor, docs/results.md):
# seconds per optimizer step by row kind, and the fixed cost of a row (start, compilation) and of one evaluation.
STEP_SECONDS = {"parent": 0.10, "twin_0.7": 0.08, "twin_0.4": 0.065, "elastic": 0.42, "minitron_0.7": 0.11,
                "minitron_0.4": 0.095}
ROW_SECONDS = {"pretrain": 15.0, "elastify": 30.0, "distill": 20.0}
EVAL_SECONDS = 20.0


def row_seconds(scale: Scale, row: Row) -> float:
    """Estimated seconds of one row on 2 cores (default scale)."""
    from reproduce_rows import row_steps

    if row.kind == "elastify" or row.method == "parent":
        key = "elastic" if row.kind == "elastify" else "parent"
    else:
        key = f"{'minitron' if row.kind == 'distill' else 'twin'}_{row.budget:g}"
    evals = 3 if row.kind == "elastify" else 1
    return ROW_SECONDS[row.kind] + row_steps(scale, row) * STEP_SECONDS[key] + evals * EVAL_SECONDS


def estimate(scale: Scale, rows: list[Row], jobs: int, cores: int) -> float:
    """Wall seconds of the schedule reproduce.py runs: rows start in plan order once their dependencies are done,
    at most `jobs` at a time, each on cores/jobs cores. These models are too small to gain from more than 2 cores;
    on fewer a row slows as (2 / cores) ** 0.7 (compilation, a large share, runs on one core anyway)."""
    slowdown = (2.0 / min(max(cores / jobs, 0.5), 2.0)) ** 0.7
    finish: dict[str, float] = {}
    running: list[float] = []
    for row in (r for r in rows if not r.unavailable):
        ready = max((finish[d] for d in row.deps), default=0.0)
        running.sort()
        start = ready if len(running) < jobs else max(ready, running.pop(0))
        finish[row.name] = start + row_seconds(scale, row) * slowdown
        running.append(finish[row.name])
    return max(finish.values(), default=0.0)


def cpu_sets(jobs: int) -> list[list[int]]:
    """This process's CPUs split into `jobs` sets (one CPU may serve several jobs when there are more jobs)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if jobs >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(jobs)]
    per = len(cpus) // jobs
    return [cpus[i * per:(i + 1) * per] for i in range(jobs)]


def _command(args: argparse.Namespace, row: Row, cpus: list[int] | None) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(args.workdir), "--scale", args.scale,
           "--row", row.name]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(Path(args.workdir).absolute() / "jax_cache"))
    if cpus is not None:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # side-by-side rows on one accelerator share it
        if len(cpus) == 1:  # one core: XLA's Eigen thread pool would only contend with itself
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    return cmd, env


def run_all(args: argparse.Namespace, scale: Scale, rows: list[Row]) -> list[str]:
    """Run every unfinished row (dependencies first, up to --jobs at a time); returns the names that failed."""
    root = Path(args.workdir)
    done = {r.name for r in rows if (root / "rows" / r.name / "DONE").exists()}
    todo = [r for r in rows if r.name not in done and not r.unavailable]
    failed: list[str] = []
    sets = cpu_sets(args.jobs) if args.jobs > 1 else [None]
    free = list(range(len(sets)))
    running: dict[subprocess.Popen, tuple[Row, int, float]] = {}
    total, t0 = len(todo), time.perf_counter()
    print(f"{len(done)} row(s) already done, {total} to run, {sum(r.unavailable for r in rows)} unavailable",
          flush=True)
    try:
        while todo or running:
            for row in list(todo):
                if not free:
                    break
                if any(d in failed for d in row.deps):
                    todo.remove(row)
                    failed.append(row.name)
                    print(f"  skip {row.name}: a row it needs failed", flush=True)
                elif all(d in done for d in row.deps):
                    todo.remove(row)
                    slot = free.pop(0)
                    cmd, env = _command(args, row, sets[slot])
                    (root / "rows" / row.name).mkdir(parents=True, exist_ok=True)
                    with open(root / "rows" / row.name / "log.txt", "a") as log:
                        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                    running[proc] = (row, slot, time.perf_counter())
                    print(f"  start {row.name}", flush=True)
            if not running:
                break
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                row, slot, started = running.pop(proc)
                free.append(slot)
                ok = proc.returncode == 0 and (root / "rows" / row.name / "DONE").exists()
                (done.add if ok else failed.append)(row.name)
                print(_progress_line(root, row, ok, len(done), len(rows), started, t0), flush=True)
    except KeyboardInterrupt:  # the rows save a checkpoint on SIGTERM; rerunning resumes them
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            proc.wait()
        raise
    return failed


def _progress_line(root: Path, row: Row, ok: bool, done: int, total: int, started: float, t0: float) -> str:
    from reproduce_report import row_summary

    took = time.perf_counter() - started
    if not ok:
        return f"[{done}/{total}] {row.name} FAILED after {took:.0f} s (see {root / 'rows' / row.name / 'log.txt'})"
    return f"[{done}/{total}] {row.name} done in {took:.0f} s: {row_summary(root, row.name)} " \
           f"(elapsed {(time.perf_counter() - t0) / 60:.1f} min)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--jobs", type=int, default=1, help="rows run side by side, each on its share of the CPUs")
    parser.add_argument("--row", help="run one row in this process (what each subprocess does)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    scale = SCALES[args.scale]
    rows = plan(scale)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.row:
        match = [r for r in rows if r.name == args.row]
        if not match:
            parser.error(f"--row {args.row!r}: not a row of this plan; rows: {[r.name for r in rows]}")
        return run_row(args.workdir, scale, match[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"scale {scale.name}: {len(rows)} rows; {cores} CPU(s); --jobs {args.jobs}", flush=True)
    if scale is DEFAULT:
        for jobs in sorted({1, args.jobs}):
            print(f"estimated wall time with --jobs {jobs} on {cores} cores: "
                  f"{estimate(scale, rows, jobs, cores) / 60:.0f} min (2 quiet cores, --jobs 1: "
                  f"{estimate(scale, rows, 1, 2) / 60:.0f} min)", flush=True)
    for row in rows:
        if row.unavailable:
            print(f"  unavailable: {row.name} ({row.note})", flush=True)
    failed = run_all(args, scale, rows)
    from reproduce_report import write_report

    paths = write_report(args.workdir, scale, rows)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if failed:
        print(f"{len(failed)} row(s) failed or were skipped: {failed}; rerun the same command to retry them",
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    from elastic_jax import tune_process

    tune_process()  # the malloc settings the command line runs under (elastic_jax/process.py)
    sys.exit(main())

"""Is nesting worth it? One elastic run against Minitron-style compression at equal tokens, in one command.

    python benchmarks/reproduce.py --workdir runs/reproduce [--scale default|smoke] [--jobs N] [--inline]

Pretrains one parent (configs/reproduce.py) for T tokens; elastifies it at E tokens with each setting of the joint
training (reproduce_plan.SETTINGS) and keeps the best on the smallest budget; trains that setting at the curve's
other token counts (0.5E, 2E); prunes the parent to each seed's deployed shapes and distils each size alone for
half of each point's tokens (Minitron-style); trains models of those shapes from scratch for T + E (the check that
the parent is trained enough). Every row has three seeds, every model the same held-out loss batches and
reasoning problems. Writes <workdir>/results.json, results.md and the plots (reproduce_report.py).

Each row runs as its own subprocess (`--row NAME`, the same script) in <workdir>/rows/NAME, so a crash loses only
that row (`--inline`: every row in this process instead, for the smoke test); a finished row has a DONE file, and
rerunning the command skips finished rows and resumes the others from their checkpoints. `--jobs N` runs
independent rows side by side, each pinned to its share of the CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_plan import SETTINGS, Row, Scale, plan  # noqa: E402
from reproduce_rows import run_row  # noqa: E402

# The default scale. The parent (configs/reproduce.py: 519K parameters, every block type) learns the "medium"
# reasoning preset mixed with Python source; T = 2000 steps of 16 x 128 tokens (4.1M tokens), meant to be long
# enough that models of its smaller budgets' shapes trained alone for T + E do not beat it (results.json:
# parent_check says whether they do).
# E = 60 stage-1 steps at 128 tokens + 20 stage-2 steps at 256 (205K tokens, E / T = 0.05; the paper's is smaller
# still); the curve has points 0.5E, E and 2E, every row three seeds.
DEFAULT = Scale("default", pretrain_steps=2000, stage1_steps=60, stage2_steps=20, points=(0.5, 1.0, 2.0),
                seeds=(0, 1, 2), problems=256, eval_batches=8)
# Smoke: every kind of row, with a 4-layer model far below `tiny`, a handful of steps, one seed, the curve at E
# only (a point below E adds rows of the same kinds and programs), the two settings the plan needs, both elastic
# stages at one length (the test's end-to-end run, in one process).
SMOKE = Scale("smoke", pretrain_steps=6, stage1_steps=4, stage2_steps=2, points=(1.0,), seeds=(0,), problems=4,
              eval_batches=1, settings=("fixed", "router"),
              overrides=("model.hidden_size=16", "model.pattern=M*E-", "model.mamba_head_dim=8", "model.head_dim=8",
                         "model.ssm_state_size=8", "model.intermediate_size=32", "model.n_routed_experts=4",
                         "model.moe_intermediate_size=16", "model.moe_shared_expert_intermediate_size=16",
                         "train.global_batch=2", "train.seq_len=64", "train.eval_max_new_tokens=4",
                         "train.warmup_steps=1", "checkpoint.every_steps=1000"),
              elastic_overrides=("elastic.stage1_seq_len=64", "elastic.stage2_seq_len=64",
                                 "elastic.importance_batches=1"))
SCALES = {"default": DEFAULT, "smoke": SMOKE}
assert set(DEFAULT.settings) <= set(SETTINGS)

# Seconds on 2 quiet CPU cores (default scale) per 16 x 128 tokens of training by row kind: the parent's and the
# twins' steps were measured on 2 cores; the elastic step with fixed architectures is the teacher's forward pass
# plus each budget's sliced step, the router's adds its masked steps (measured). Plus a fixed cost per row (start,
# compilation) and per evaluated model (256 problems).
STEP_SECONDS = {"parent": 0.10, "twin_0.7": 0.08, "twin_0.4": 0.065, "elastic_router": 0.42, "elastic": 0.28,
                "minitron_0.7": 0.11, "minitron_0.4": 0.095}
ROW_SECONDS = {"pretrain": 15.0, "elastify": 30.0, "distill": 20.0}
EVAL_SECONDS = 25.0


def row_seconds(scale: Scale, row: Row) -> float:
    """Estimated seconds of one row on 2 cores (default scale)."""
    from reproduce_plan import row_tokens

    if row.kind == "elastify":
        key = "elastic_router" if row.setting == "router" else "elastic"
    elif row.method == "parent":
        key = "parent"
    else:
        key = f"{'minitron' if row.kind == 'distill' else 'twin'}_{row.budget:g}"
    evals = 3 if row.kind == "elastify" else 1
    return ROW_SECONDS[row.kind] + row_tokens(scale, row) / 2048 * STEP_SECONDS[key] + evals * EVAL_SECONDS


def estimate(scale: Scale, rows: list[Row], jobs: int, cores: int) -> float:
    """Wall seconds of the schedule reproduce.py runs: rows start in plan order once their dependencies are done,
    at most `jobs` at a time, each on cores/jobs cores. These models are too small to gain from more than 2 cores;
    on fewer a row slows as (2 / cores) ** 0.7 (compilation, a large share, runs on one core anyway)."""
    slowdown = (2.0 / min(max(cores / jobs, 0.5), 2.0)) ** 0.7
    finish: dict[str, float] = {}
    running: list[float] = []
    for row in rows:
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
    todo = [r for r in rows if r.name not in done]
    failed: list[str] = []
    sets = cpu_sets(args.jobs) if args.jobs > 1 else [None]
    free = list(range(len(sets)))
    running: dict[subprocess.Popen, tuple[Row, int, float]] = {}
    total, t0 = len(todo), time.perf_counter()
    print(f"{len(done)} row(s) already done, {total} to run", flush=True)
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


def run_inline(workdir: Path, scale: Scale, rows: list[Row]) -> list[str]:
    """Every unfinished row in this process, in plan order (a row whose dependency failed is skipped)."""
    failed: list[str] = []
    for row in rows:
        if any(d in failed for d in row.deps):
            failed.append(row.name)
            continue
        try:
            ok = run_row(workdir, scale, row) == 0
        except Exception:  # noqa: BLE001 - one row's failure is reported, the others still run
            traceback.print_exc()
            ok = False
        if not ok:
            failed.append(row.name)
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
    parser.add_argument("--inline", action="store_true", help="run every row in this process, one after another")
    parser.add_argument("--report", action="store_true", help="only write the report of the rows finished so far")
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
    if args.report:
        failed = []
    else:
        failed = run_inline(args.workdir, scale, rows) if args.inline else run_all(args, scale, rows)
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

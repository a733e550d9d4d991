"""Elastification is interruptible: SIGKILL + restart ends bit-identical, SIGTERM / Ctrl-C reach every process.

Runs `elastic-jax elastify` in subprocesses, as a user would. The schedule (6 stage-1 + 2 stage-2 steps, the
architectures fixed from step 4, a checkpoint every 2 steps) puts a new compilation right after the
checkpoints the tests wait for (the static-slice program after step 4, the stage-2 program after step 6), so a
kill sent when a checkpoint appears lands before the run ends.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import elastic_jax as ej
from elastic_jax.checkpoint import Checkpointer
from elastic_jax.model_io import save_model
from elastic_jax.train.metrics import read_metrics
from tests.train.helpers import REPO, assert_trees_equal, final_params, subprocess_env

MODEL = ["model.pattern='M*E-'", "model.hidden_size=32"]
RUN = [*MODEL, "elastic.budgets=(1.0, 0.5)", "elastic.stage2_weights=(0.7, 0.3)", "elastic.stage1_steps=6",
       "elastic.stage2_steps=2", "elastic.static_after=0.5", "elastic.stage1_seq_len=32", "elastic.stage2_seq_len=48",
       "elastic.importance_batches=1", "train.global_batch=2", "train.warmup_steps=1", "train.eval_prompts=0",
       "train.eval_batches=1", "train.log_every=1", "train.progress_bar=False", "checkpoint.every_steps=2",
       "checkpoint.max_to_keep=10"]
FIX_STEP = 4  # static_after * total steps


def _cmd(workdir: Path, parent: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "elastic_jax.cli", "elastify", "--config", "tiny_elastic", "--parent", str(parent),
            "--workdir", str(workdir), *(f"--config.{o}" for o in overrides)]


def _start(workdir: Path, parent: Path, overrides: list[str] = RUN, **env: str) -> subprocess.Popen:
    return subprocess.Popen(_cmd(workdir, parent, overrides), cwd=REPO,
                            env=subprocess_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"elastify exited {proc.returncode}\n{out[-2000:]}\n{err[-6000:]}"
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))  # the run's figures


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"elastify ended (rc {proc.returncode}) before {what}\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"{what} not reached in {timeout} s")


def _logged_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(workdir) if "train/loss" in r]


def _checkpoint(workdir: Path) -> tuple[dict, dict]:
    """(params {"model", "router"}, elastic metadata) of the newest checkpoint."""
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        meta = ckpt.read_metadata(ckpt.latest_step())["elastic"]
    finally:
        ckpt.close()
    return final_params(workdir), meta


def _reference(root: Path) -> None:
    cfg = ej.load_config("tiny", MODEL)
    save_model(root / "parent", cfg, ej.init_params(cfg, 0))
    result = _finish(_start(root / "whole", root / "parent"))
    assert result["resumed_from"] is None and result["step"] == 8 and not result["preempted"]


@pytest.fixture(scope="module")
def reference(build_once):
    """A parent and one uninterrupted elastification of it (once per test run, whichever worker asks first)."""
    return build_once("elastify_resume", _reference)


@pytest.mark.parametrize("kill_after", [2, 6], ids=["before_fixing", "after_fixing"])
def test_sigkill_and_restart_ends_bit_identical(reference, tmp_path, kill_after):
    """Killed right after a checkpoint (router still choosing / architectures fixed), the restarted run ends with
    the same nested models (parameters, router, fixed specs) as an uninterrupted one, and logs each step once."""
    whole, broken = reference / "whole", tmp_path / "broken"
    proc = _start(broken, reference / "parent")
    _wait_for(proc, lambda: (broken / "checkpoints" / str(kill_after)).is_dir(), f"checkpoint {kill_after}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    result = _finish(_start(broken, reference / "parent"))
    if kill_after < FIX_STEP:
        assert kill_after <= result["resumed_from"] <= FIX_STEP, result["resumed_from"]
    else:
        assert FIX_STEP < result["resumed_from"] < 8, result["resumed_from"]
    (params_a, meta_a), (params_b, meta_b) = _checkpoint(whole), _checkpoint(broken)
    assert meta_a["fixed_specs"] and meta_a["fixed_specs"] == meta_b["fixed_specs"] == meta_a["specs"]
    assert meta_b["specs"] == meta_a["specs"]
    assert_trees_equal(params_a, params_b)
    assert _logged_steps(broken) == list(range(1, 9))  # the steps redone after the restore appear once
    budgets_a, budgets_b = (json.loads((run / "budgets.json").read_text()) for run in (whole, broken))
    assert [b["loss"] for b in budgets_a] == [b["loss"] for b in budgets_b]


def test_resume_with_another_schedule_names_the_fields(reference, tmp_path):
    """Rerunning elastify in a finished run's workdir with another schedule fails with one line naming the
    differing fields, and trains nothing."""
    metrics = (reference / "whole" / "metrics.jsonl").read_text()
    proc = subprocess.run(_cmd(reference / "whole", reference / "parent",
                               [*RUN, "elastic.stage2_steps=4", "elastic.static_after=0.25"]),
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint step 8 in") and "elastic.stage2_steps (checkpoint 2, now 4)" in line
    assert "elastic.static_after (checkpoint 0.5, now 0.25)" in line
    assert sorted(int(p.name) for p in (reference / "whole" / "checkpoints").iterdir() if p.name.isdigit())[-1] == 8
    assert (reference / "whole" / "metrics.jsonl").read_text() == metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(reference, tmp_path):
    """SIGTERM reaches process 1 only: both processes agree, save the same step and exit 0."""
    overrides = [*MODEL, "elastic.budgets=(1.0, 0.5)", "elastic.stage2_weights=None", "elastic.stage1_steps=60",
                 "elastic.stage2_steps=0", "elastic.static_after=1.0", "elastic.stage1_seq_len=32",
                 "elastic.permute=False", "train.global_batch=2", "train.warmup_steps=1", "train.log_every=5",
                 "train.progress_bar=False", "checkpoint.every_steps=0"]
    port = _free_port()
    procs = [_start(tmp_path, reference / "parent", overrides, ELASTIC_JAX_COORDINATOR=f"localhost:{port}",
                    ELASTIC_JAX_NUM_PROCESSES="2", ELASTIC_JAX_PROCESS_ID=str(i)) for i in range(2)]
    _wait_for(procs[0], lambda: any(s >= 2 for s in _logged_steps(tmp_path)), "step 2")
    procs[1].send_signal(signal.SIGTERM)
    results = [_finish(p) for p in procs]
    steps = {r["step"] for r in results}
    assert len(steps) == 1 and all(r["preempted"] and r["stopped_at"] == r["step"] for r in results), results
    step = steps.pop()
    assert step < 60 and step % 5 == 0  # processes agree at log steps
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [step]

"""Fault tolerance of the pretraining loop, in subprocesses: SIGKILL + restart, SIGTERM, a corrupt checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from elastic_jax.train.metrics import read_metrics
from tests.train.helpers import REPO, assert_trees_equal, final_params, losses, run_train, subprocess_env, train_cmd

STEPS = 100
RESUME_RUN = (f"--config.train.total_steps={STEPS}", "--config.checkpoint.every_steps=10",
              "--config.data.text_weight=0.3", "--config.data.text_max_files=40")


def _start(workdir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(workdir, *overrides), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 120) -> None:
    """Poll metrics.jsonl until it records `step` (fail if the process ends first)."""
    path, deadline = workdir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(json.loads(line).get("step", 0) >= step
                                 for line in path.read_text().splitlines()[-5:] if line.strip()):
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before step {step}\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"step {step} not reached in {timeout} s")


def test_sigkill_and_restart_is_bitwise_identical(tmp_path):
    """A run killed mid-way (SIGKILL) and restarted ends with the same bits as an uninterrupted run."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_train(whole, *RESUME_RUN)
    proc = _start(broken, *RESUME_RUN)
    _wait_for_step(proc, broken, 35)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(losses(broken))
    assert killed_at < STEPS, "the run finished before it could be killed"
    out = run_train(broken, *RESUME_RUN)
    result = json.loads(out.stdout.strip().splitlines()[-1])["result"]
    assert result["resumed_from"] is not None and 0 < result["resumed_from"] <= killed_at
    assert result["compiles"] == 1
    assert_trees_equal(final_params(whole), final_params(broken))
    assert losses(whole) == losses(broken)  # every step, including those after the resume (data state restored)
    # the steps between the checkpoint and the kill were logged twice, and are recorded once
    assert [r["step"] for r in read_metrics(broken) if "train/loss" in r] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stop_signal_saves_and_exits_zero(tmp_path, sig):
    """SIGTERM or Ctrl-C: the run saves a checkpoint at the step it is on and exits with status 0, no traceback.

    Rerunning with another learning rate is refused in one line naming the field; nothing is trained or saved.
    """
    run = ("--config.train.total_steps=120", "--config.checkpoint.every_steps=0")
    proc = _start(tmp_path, *run)
    _wait_for_step(proc, tmp_path, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])["result"]
    assert result["preempted"] is True and result["step"] >= 5
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [result["step"]]
    assert f"{sig.name} received" in err and "Traceback" not in err and "KeyboardInterrupt" not in err

    other = subprocess.run(train_cmd(tmp_path, *run, "--config.train.lr=0.001"), cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2
    line = other.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint step {steps[0]} in") and "train.lr (checkpoint 0.003, now 0.001)" in line
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == steps
    assert max(r["step"] for r in read_metrics(tmp_path)) == steps[0]


def test_corrupt_newest_checkpoint_falls_back(tmp_path):
    """Truncating a file of the newest checkpoint: the restart names the bad step and resumes from the one before.

    The restarted run also evaluates at its end (held-out loss, reasoning accuracy by greedy generation).
    """
    run_train(tmp_path, "--config.train.total_steps=20", "--config.checkpoint.every_steps=10")
    newest = tmp_path / "checkpoints" / "20" / "state"
    data_files = sorted((p for p in newest.rglob("*") if p.is_file() and p.parent.name == "d"),
                        key=lambda p: p.stat().st_size)
    victim = data_files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = run_train(tmp_path, "--config.train.total_steps=30", "--config.checkpoint.every_steps=10",
                    "--config.train.eval_batches=1", "--config.train.eval_prompts=4",
                    "--config.train.eval_max_new_tokens=8")
    assert "checkpoint step 20 in" in out.stderr and "is unreadable" in out.stderr
    assert "falling back to step 10" in out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])["result"]
    assert result["resumed_from"] == 10 and result["step"] == 30
    assert (tmp_path / "unreadable" / "checkpoints_20").is_dir()
    assert result["eval_loss"] > 0 and 0.0 <= result["accuracy"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r and r["step"] == 30 for r in records)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

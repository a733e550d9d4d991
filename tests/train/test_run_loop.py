"""The loop skeleton in-process on a toy task: checkpoint policy, metric names, stop signals, metrics truncation,
and which settings a resume may change."""

from __future__ import annotations

import json
import os
import signal

import jax.numpy as jnp
import pytest

from elastic_jax.checkpoint import CheckpointConfig, Checkpointer
from elastic_jax.train.metrics import MetricsWriter, read_metrics, truncate_after
from elastic_jax.train.preemption import Preemption
from elastic_jax.train.run_loop import LoopSettings, LoopTask, resume_settings, run_loop
from elastic_jax.train.state import TrainState


def _toy_task(total: int, signal_at: int | None = None, sig: int = signal.SIGTERM) -> LoopTask:
    """A 'model' that counts: each step adds 1 to its parameter; the data state is the next index."""
    fed = {"next": 0}

    def step(state: TrainState, index: int):
        assert index == int(state.step)
        fed["next"] = index + 1
        if index == signal_at:
            os.kill(os.getpid(), sig)
        new = TrainState(step=state.step + 1, params={"w": state.params["w"] + 1}, opt_state={})
        return new, {"loss": 1.0 / (index + 1), "lr": jnp.asarray(0.1)}

    return LoopTask(name="toy", total_steps=total, step=step, data_state=lambda: dict(fed),
                    metadata=lambda state: {"model": {}, "w": float(state.params["w"])}, tokens=lambda index: 8,
                    compilations=lambda: 1)


def _run(tmp_path, task: LoopTask, every: int = 3, log_every: int = 1):
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(every_steps=every, max_to_keep=10))
    writer = MetricsWriter(tmp_path, start_step=0)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(())}, opt_state={})
    try:
        _, result = run_loop(task, state, start=0, resumed_from=None, ckpt=ckpt, writer=writer,
                             settings=LoopSettings(log_every=log_every, checkpoint_every=every, progress_bar=False))
        return result, ckpt.all_steps()
    finally:
        writer.close()
        ckpt.close()


def test_checkpoint_policy_and_metric_names(tmp_path):
    result, steps = _run(tmp_path, _toy_task(7))
    assert steps == [3, 6, 7]  # every 3 steps and at the end
    assert result["step"] == 7 and result["steps_run"] == 7 and not result["preempted"]
    assert result["resumed_from"] is None and result["loss"] == pytest.approx(1 / 7)
    record = read_metrics(tmp_path)[0]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/compiles"} <= set(record)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_the_current_step(tmp_path, sig):
    """A stop signal during step 5 (index 4): that step completes, is saved, and the loop returns."""
    previous = signal.getsignal(sig)
    result, steps = _run(tmp_path, _toy_task(20, signal_at=4, sig=sig), every=0)
    assert result["preempted"] and result["step"] == 5 and steps == [5]
    assert signal.getsignal(sig) == previous  # handlers restored


def test_second_ctrl_c_aborts():
    with Preemption() as preemption:
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.requested and preemption.should_stop(sync=False)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_resumed_metrics_drop_records_past_the_restored_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "train/loss": 1.0}) for s in range(1, 8)]
    path.write_text("\n".join(rows) + '\n{"step": 8, "train/lo')  # killed mid-write
    assert truncate_after(path, 5) == 3
    writer = MetricsWriter(tmp_path, start_step=5)
    writer.write(6, {"train/loss": 2.0})
    writer.close()
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [(s, 1.0) for s in range(1, 6)] + [
        (6, 2.0)]


def test_resume_settings():
    train = {"lr": 0.1, "total_steps": 100, "schedule_steps": 0, "log_every": 10, "eval_prompts": 4}
    settings = resume_settings({"train": train, "data": {"seed": 1}, "mesh": {"data": 2},
                                "checkpoint": {"every_steps": 5}, "elastic": {"router": {"tau": (1, 2)}}})
    # the schedule spans total_steps: it may not change; logging, eval, mesh and checkpoint cadence may
    assert settings == {"train.lr": 0.1, "train.total_steps": 100, "train.schedule_steps": 0, "data.seed": 1,
                        "elastic.router.tau": [1, 2]}
    fixed_schedule = resume_settings({"train": {**train, "schedule_steps": 120}})
    assert "train.total_steps" not in fixed_schedule and fixed_schedule["train.schedule_steps"] == 120

"""The one training loop: step, data, evaluation cadence, metrics, checkpoint policy and preemption.

Pretraining (`loop.py`) and elastification (`elastify.py`) differ only in what a `LoopTask` gives: the step
function (which reads its own data feed), the data-iterator state, the checkpoint's metadata and the
evaluation. Both therefore log the same metric names (`train/loss`, `train/grad_norm`, `train/lr`,
`train/tokens_per_s`, `train/compiles`, plus the step's own, e.g. `train/kd/0.7`), save on the same policy
(every `checkpoint.every_steps`, at the end, and on a stop signal agreed by every process) and report the
same result keys (`resumed_from`, `preempted`, `step`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
from tqdm import tqdm

from elastic_jax.checkpoint import Checkpointer
from elastic_jax.train.metrics import MetricsWriter
from elastic_jax.train.preemption import Preemption
from elastic_jax.train.state import TrainState

log = logging.getLogger("elastic_jax.train")

# Multi-process runs agree on stopping at least this often (and at every log and checkpoint step, where the
# host waits for the device anyway): one tiny all-reduce per such step, none in between.
PREEMPTION_CHECK_STEPS = 10

# Settings a resumed run may change: they do not alter the trained values (how long to run, logging, evaluation,
# checkpoint cadence, the device mesh). Every other experiment field must equal the checkpoint's.
RESUMABLE_FIELDS = ("train.log_every", "train.eval_every", "train.eval_batches", "train.eval_prompts",
                    "train.eval_max_new_tokens", "train.progress_bar")
RESUMABLE_SECTIONS = ("checkpoint.", "mesh.")


@dataclasses.dataclass
class LoopTask:
    """What one kind of training brings to the loop.

    step(state, index) -> (state, metrics): runs step `index` (0-based), reading its own batch; metric values
    are device scalars or Python numbers, logged as `train/<name>`.
    data_state() -> this process's data-iterator state, saved with every checkpoint.
    metadata(state) -> the checkpoint's metadata at `state`.
    tokens(index) -> tokens trained on by step `index` (for train/tokens_per_s).
    evaluate(state) -> {"eval/...": value}, every `eval_every` steps and at the end; None: no evaluation.
    """

    name: str
    total_steps: int
    step: Callable[[TrainState, int], tuple[TrainState, Mapping[str, Any]]]
    data_state: Callable[[], Any]
    metadata: Callable[[TrainState], dict[str, Any]]
    tokens: Callable[[int], int]
    compilations: Callable[[], int]
    evaluate: Callable[[TrainState], dict[str, float]] | None = None
    eval_every: int = 0


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The loop's cadences (from the `train` and `checkpoint` sections)."""

    log_every: int = 10
    checkpoint_every: int = 0
    progress_bar: bool = True


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for a nested mapping (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resume_settings(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The flat fields of the validated config `sections` that a resumed run must share with its checkpoint.

    Fields named in RESUMABLE_FIELDS / RESUMABLE_SECTIONS may change. So may `train.total_steps` when
    `train.schedule_steps` fixes the learning-rate schedule (a run can be extended); when the schedule spans
    `total_steps`, it may not. Values go through JSON, as the checkpoint's metadata does.
    """
    flat = json.loads(json.dumps(flatten(sections)))
    if flat.get("train.schedule_steps"):
        flat.pop("train.total_steps", None)
    return {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS and not k.startswith(RESUMABLE_SECTIONS)}


def _sync_point(done: int, total: int, settings: LoopSettings) -> bool:
    """Steps where the host waits for the device anyway (logging, saving, the end), or every few steps."""
    every = settings.checkpoint_every
    return (done % min(settings.log_every, PREEMPTION_CHECK_STEPS) == 0 or done == total
            or bool(every and done % every == 0))


def run_loop(task: LoopTask, state: TrainState, *, start: int, resumed_from: int | None, ckpt: Checkpointer,
             writer: MetricsWriter, settings: LoopSettings) -> tuple[TrainState, dict[str, Any]]:
    """Train steps start+1 .. task.total_steps (or until a stop signal), saving as configured; (state, result)."""
    with Preemption() as preemption:
        state, result = _steps(task, state, start, ckpt, writer, settings, preemption)
    result["resumed_from"] = resumed_from
    if not result["preempted"] and task.evaluate is not None:
        t_eval = time.perf_counter()
        final = task.evaluate(state)
        result["eval_seconds"] += time.perf_counter() - t_eval
        writer.write(result["step"], final)
        result.update({"eval_loss": final.get("eval/loss"), "accuracy": final.get("eval/accuracy")})
    ckpt.wait()
    log.info("%s: step compiled %d time(s); %d steps in %.1f s (+ %.1f s of evaluation)", task.name,
             result["compiles"], result["steps_run"], result["train_seconds"], result["eval_seconds"])
    return state, result


def _log_record(task: LoopTask, metrics: Mapping[str, Any], tokens: int, seconds: float) -> dict[str, float]:
    values = {f"train/{k}": float(v) for k, v in jax.device_get(dict(metrics)).items()}
    values["train/tokens_per_s"] = tokens / max(seconds, 1e-9)
    values["train/compiles"] = task.compilations()
    return values


def _steps(task: LoopTask, state: TrainState, start: int, ckpt: Checkpointer, writer: MetricsWriter,
           settings: LoopSettings, preemption: Preemption) -> tuple[TrainState, dict[str, Any]]:
    total, every = task.total_steps, settings.checkpoint_every
    result: dict[str, Any] = {"preempted": False}
    bar = tqdm(total=total, initial=start, desc=task.name, dynamic_ncols=True,
               disable=not settings.progress_bar or jax.process_index() != 0)
    t0 = last_time = time.perf_counter()
    done, eval_seconds, tokens, all_tokens = start, 0.0, 0, 0
    for done in range(start + 1, total + 1):
        state, metrics = task.step(state, done - 1)
        tokens += task.tokens(done - 1)
        bar.update(1)
        if done % settings.log_every == 0 or done == total:
            values = _log_record(task, metrics, tokens, time.perf_counter() - last_time)
            writer.write(done, values)
            bar.set_postfix(loss=f"{values['train/loss']:.4f}")
            result["loss"] = values["train/loss"]
            all_tokens, tokens, last_time = all_tokens + tokens, 0, time.perf_counter()
        if task.evaluate is not None and task.eval_every and done % task.eval_every == 0 and done < total:
            t_eval = time.perf_counter()
            writer.write(done, task.evaluate(state))
            eval_seconds += time.perf_counter() - t_eval
            last_time += time.perf_counter() - t_eval
        stop = preemption.should_stop(sync=_sync_point(done, total, settings))
        if stop or done == total or (every and done % every == 0):
            ckpt.save(done, state.to_tree(), task.data_state(), task.metadata(state))
        if stop:
            ckpt.wait()
            log.warning("%s: saved step %d and stopping", preemption.signal_name, done)
            result["preempted"] = True
            break
    bar.close()
    train_seconds = time.perf_counter() - t0 - eval_seconds
    steps_run = done - start
    result.update(step=done, steps_run=steps_run, compiles=task.compilations(), train_seconds=train_seconds,
                  eval_seconds=eval_seconds, tokens_per_s=(all_tokens + tokens) / max(train_seconds, 1e-9))
    return state, result

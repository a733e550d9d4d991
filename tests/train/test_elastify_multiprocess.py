"""Two processes on localhost (jax.distributed, one fake CPU device each, started by launch/local_multiprocess.sh)
elastify exactly like one process: the same loss at every step and the same per-budget evaluation.

One tiny parent, 4 joint steps (2 with the router choosing, 2 with the architectures fixed as static slices, so
both programs and the fixing step run across processes), then the per-budget table. Both processes read the
global batch and keep their rows (train.data_loading='global'): with per-process streams the data would differ
by design. The parent is not ranked (elastic.permute=False: importance is host code, the same in every process).
The CE term keeps the loss of order 1 (distillation from a copy of itself is ~1e-3, where float32 summation
order alone moves it by 1e-5).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import elastic_jax as ej
from elastic_jax.model_io import save_model
from elastic_jax.train.metrics import read_metrics
from tests.train.helpers import REPO, subprocess_env

MODEL = ["model.pattern='M*E-'", "model.hidden_size=32"]
RUN = [*MODEL, "elastic.router.budgets=(1.0, 0.5)", "elastic.ce_weight=1.0", "elastic.stage2_weights=None",
       "elastic.stage1_steps=4", "elastic.stage2_steps=0", "elastic.static_after=0.5", "elastic.stage1_seq_len=32",
       "elastic.permute=False", "train.global_batch=2", "train.data_loading='global'",
       "train.warmup_steps=1", "train.eval_prompts=0", "train.eval_batches=1", "train.log_every=1",
       "train.progress_bar=False", "checkpoint.every_steps=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _args(workdir: Path, parent: Path) -> list[str]:
    return ["elastify", "--config", "tiny_elastic", "--parent", str(parent), "--workdir", str(workdir),
            *(f"--config.{o}" for o in RUN)]


def _figures(stdout: str) -> dict:
    """The run's figures: the JSON line elastify prints (process 0's, under the launcher's [p0] prefix)."""
    lines = [line.removeprefix("[p0] ") for line in stdout.splitlines() if line.startswith(("{", "[p0] {"))]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1])


# The joint loss and its terms per budget (distillation, cross-entropy, resource), the router's size ratios and
# the gradient norm: everything a step logs except timings and the schedule.
LOGGED = ("train/loss", "train/kd/", "train/ce/", "train/resource/", "train/ratio/", "train/grad_norm")


def _losses(workdir: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(LOGGED)}
            for r in read_metrics(workdir) if "train/loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A random parent, then the same elastification as one process and as two."""
    root = tmp_path_factory.mktemp("elastify_multiprocess")
    cfg = ej.load_config("tiny", MODEL)
    save_model(root / "parent", cfg, ej.init_params(cfg, 0))
    one = subprocess.run([sys.executable, "-m", "elastic_jax.cli", *_args(root / "one", root / "parent")], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, f"{one.stdout[-2000:]}\n{one.stderr[-6000:]}"
    env = subprocess_env(PYTHON=sys.executable, PORT=str(_free_port()))
    two = subprocess.run(["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2",
                          *_args(root / "two", root / "parent")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, f"{two.stdout[-6000:]}\n{two.stderr[-3000:]}"
    for proc in (one, two):
        assert _figures(proc.stdout)["step"] == 4, proc.stdout[-3000:]
    return root


def test_two_processes_log_the_losses_of_one(runs):
    one, two = _losses(runs / "one"), _losses(runs / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert one[step].keys() == two[step].keys() and len(one[step]) == 10, (one[step], two[step])
        for name, value in one[step].items():
            assert two[step][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, name, one[step], two[step])


def test_two_processes_fix_and_evaluate_the_same_architectures(runs):
    """budgets.json (written by process 0 after training): the same architectures and eval losses."""
    one, two = (json.loads((runs / name / "budgets.json").read_text()) for name in ("one", "two"))
    assert [b["budget"] for b in one] == [b["budget"] for b in two] == [1.0, 0.5]
    assert one[1]["spec"] != one[0]["spec"]  # the 0.5 budget is a real slice
    for a, b in zip(one, two):
        assert a["spec"] == b["spec"], (a, b)
        for key in ("loss", "zero_shot_loss", "parent_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)

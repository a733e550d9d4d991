"""Shared test settings (float32 matmuls at full precision so parity tolerances mean what they say), one
persistent compilation cache per test run, and the one tiny elastic checkpoint that the inference and conversion
tests share (built once per test run, whichever xdist worker asks first)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from compile_flags import FAST_COMPILE  # noqa: E402 (tests/ is on sys.path for its conftest)

os.environ["XLA_FLAGS"] = f"{FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()  # read when jax starts

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

# Every block kind (M * E -), budgets 1.0 / 0.7 / 0.4, four joint steps with the router's choice fixed after two;
# the router's grid has widths such as 36 that bf16 grouped matmuls refuse: the export aligns them.
OVERRIDES = ["model.pattern='M*E-'", "model.hidden_size=48", "elastic.stage1_steps=4", "elastic.stage2_steps=0",
             "elastic.stage1_seq_len=32", "elastic.importance_batches=1", "elastic.static_after=0.5",
             "train.global_batch=2", "train.eval_prompts=0", "train.eval_batches=1", "train.log_every=1",
             "train.warmup_steps=1", "train.progress_bar=False", "checkpoint.every_steps=4"]


def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run that every xdist worker sees (each worker's basetemp is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    root = run_root(tmp_path_factory)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if `build` fails
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a failed attempt's leftovers
            path.mkdir(parents=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """`build_once(name, build)`: the path `build(path)` made in one process of this test run (the first to ask);
    the other xdist workers wait for it and reuse it. Expensive shared inputs are made once per run, not per worker.
    """
    return lambda name, build: _build_once(tmp_path_factory, name, build)


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has made its factory
def pytest_configure(config):
    """One persistent compilation cache per test run: a program that one test (or xdist worker, or a process a
    test starts) compiled is loaded, not compiled again, by another with the same shapes, also where each builds
    its own jitted function. Set here, before anything compiles: JAX decides once per process whether it uses
    the cache."""
    cache = run_root(config._tmp_path_factory) / "xla_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # the processes the tests start (CLI runs, the reproduce rows, notebook kernels) share it too
    os.environ.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@dataclasses.dataclass(frozen=True)
class ElasticRun:
    root: Path  # parent/ (the parent model), run/ (the elastify workdir)
    overrides: list[str]  # of the tiny_elastic experiment
    result: dict  # what run_elastify returned (JSON types)

    @property
    def checkpoints(self) -> Path:
        return self.root / "run" / "checkpoints"


def _build_elastic_run(root: Path) -> None:
    import elastic_jax as ej
    from elastic_jax.experiment import load_experiment
    from elastic_jax.model_io import save_model
    from elastic_jax.train.elastify import run_elastify

    cfg = ej.load_config("tiny", OVERRIDES[:2])
    save_model(root / "parent", cfg, ej.init_params(cfg, 0))
    result = run_elastify(load_experiment("tiny_elastic", OVERRIDES), str(root / "run"), str(root / "parent"))
    (root / "result.json").write_text(json.dumps(result))


@pytest.fixture(scope="session")
def elastic_run(build_once) -> ElasticRun:
    """One elastification (parent M*E-, hidden 48, budgets 1.0 / 0.7 / 0.4) per test run; read-only."""
    root = build_once("elastic_run", _build_elastic_run)
    return ElasticRun(root, list(OVERRIDES), json.loads((root / "result.json").read_text()))


@pytest.fixture(scope="session")
def elastic_checkpoint(elastic_run):
    """Path of the shared elastic checkpoint directory; read-only."""
    return elastic_run.checkpoints

"""A built wheel works without the source tree: installed (not editable) into a fresh environment, `elastic-jax`
run from an empty directory finds its named configs and everything else a verb reads, and imports the wheel's
package, not this checkout's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from elastic_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "elastic_jax")  # what the build reads (a copy: no build/ in the checkout)
PRETRAIN = ["train.total_steps=2", "train.warmup_steps=1", "train.global_batch=2", "train.seq_len=32",
            "train.eval_every=0", "train.eval_batches=0", "train.eval_prompts=0", "train.progress_bar=False",
            "checkpoint.async_save=False"]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, set[str]]:
    """(a fresh environment holding only the built wheel, the wheel's file names). Its own site-packages comes
    first; the dependencies come from the running interpreter's, listed after it by a .pth file (so the checkout's
    editable finder stays out)."""
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tmp / "src" / name)
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
            str(tmp / "src")])
    (wheel,) = (tmp / "dist").glob("elastic_jax-*.whl")
    env = tmp / "env"
    _check([sys.executable, "-m", "venv", "--without-pip", str(env)])
    _check([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps", "-q",
            str(wheel)])
    site = _check([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return env, set(zipfile.ZipFile(wheel).namelist())


def _check(command: list[str]) -> str:
    """stdout of a build step; its stderr in the failure when it fails."""
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    return proc.stdout.strip()


def _run(env: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True,
                          env={**clean, "JAX_PLATFORMS": "cpu", "PATH": f"{env / 'bin'}:{clean['PATH']}"})


def test_installed_wheel_runs_from_an_empty_directory(wheel_env, tmp_path, capsys, monkeypatch):
    env, names = wheel_env
    assert {"elastic_jax/configs/tiny.py", "elastic_jax/configs/tiny_elastic.py",
            "elastic_jax/kernels/cpu_gemv/gemv.cc", "elastic_jax/kernels/cpu_gemv/mixers.cc"} <= names
    work = tmp_path / "empty"
    work.mkdir()
    where = _run(env, work, "python", "-c", "import elastic_jax; print(elastic_jax.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(env)), (where.stdout, where.stderr)  # the wheel's

    assert main(["params", "--config", "tiny"]) == 0  # what the checkout prints, to compare with
    params = _run(env, work, "elastic-jax", "params", "--config", "tiny")
    assert params.returncode == 0 and params.stdout == capsys.readouterr().out, params.stderr
    # the quickstart's first stage at toy length (the named config, the built-in data: the reasoning task and the
    # standard library's source; a checkpoint), then decoding from it as the checkout decodes
    pretrain = _run(env, work, "elastic-jax", "pretrain", "--config", "tiny", "--workdir", "run",
                    *(f"--config.{o}" for o in PRETRAIN))
    assert pretrain.returncode == 0, pretrain.stderr[-2000:]
    generate = ["generate", "--checkpoint", "run/checkpoints", "--prompt", "1+1=", "--max-new-tokens", "3"]
    from_wheel = _run(env, work, "elastic-jax", *generate)
    assert from_wheel.returncode == 0, from_wheel.stderr[-2000:]
    monkeypatch.chdir(work)
    assert main(generate) == 0
    assert from_wheel.stdout == capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir()) == ["run"]

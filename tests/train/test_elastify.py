"""Elastification end to end at toy size: checkpoint metadata, resume, slicing trained and in-between budgets."""

from __future__ import annotations

import json
import shutil

import numpy as np

import elastic_jax as ej
from elastic_jax.cli import main
from elastic_jax.experiment import load_experiment
from elastic_jax.model_io import load_model
from elastic_jax.train.elastify import run_elastify


def test_elastify_then_slice(elastic_run, tmp_path, capsys):
    result, cfg = elastic_run.result, ej.load_config("tiny", elastic_run.overrides[:2])
    rows = result["budgets"]
    assert [r["budget"] for r in rows] == [1.0, 0.7, 0.4]
    assert rows[0]["total_fraction"] == 1.0 and all(abs(r["ratio_to_target"] - 1) <= 0.05 for r in rows)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["zero_shot_loss"]) for r in rows)
    assert result["resumed_from"] is None and result["step"] == 4 and not result["preempted"]

    _, params, meta = load_model(elastic_run.checkpoints)
    assert set(params) == {"model", "router"}
    assert set(meta["elastic"]["specs"]) == {"1", "0.7", "0.4"} and meta["elastic"]["ranking"]
    # a second call finds the finished run and does not train again (in a copy: the shared run stays as it is)
    shutil.copytree(elastic_run.root / "run", tmp_path / "run")
    again = run_elastify(load_experiment("tiny_elastic", elastic_run.overrides), str(tmp_path / "run"),
                         str(elastic_run.root / "parent"))
    assert again["compilations"] == 0 and again["resumed_from"] == 4 and again["steps_run"] == 0

    capsys.readouterr()
    assert main(["slice", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--budget", "0.55",
                 "--out", str(tmp_path / "b055"), "--format", "hf"]) == 0
    hf = json.loads((tmp_path / "b055" / "config.json").read_text())
    assert hf["hidden_size"] <= cfg.hidden_size
    sub_cfg, sub_params = ej.from_hf(tmp_path / "b055")
    assert abs(ej.count_params(sub_cfg)[0] / ej.count_params(cfg)[0] - 0.55) <= 0.55 * 0.05 + 1e-9
    assert main(["slice", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--budget", "0.7",
                 "--out", str(tmp_path / "b07")]) == 0
    trained = meta["elastic"]["specs"]["0.7"]
    assert load_model(tmp_path / "b07")[2]["sliced_from"]["spec"] == trained


def test_gpu_gemm_advice():
    from elastic_jax.train.elastify import GPU_GEMM_FLAG, gpu_gemm_advice

    assert GPU_GEMM_FLAG in gpu_gemm_advice("gpu", "")
    assert GPU_GEMM_FLAG in gpu_gemm_advice("gpu", "--xla_gpu_autotune_level=0")
    assert gpu_gemm_advice("gpu", f"--xla_dump_to=/tmp {GPU_GEMM_FLAG}") is None
    assert gpu_gemm_advice("gpu", "--xla_gpu_enable_triton_gemm=true") is None  # the user chose: leave it
    assert gpu_gemm_advice("cpu", "") is None and gpu_gemm_advice("tpu", "") is None

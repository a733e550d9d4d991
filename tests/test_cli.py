"""The command line: params accounting, init -> export-hf -> import-hf -> generate, and clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.cli import main
from elastic_jax.model_io import check_output, load_model, save_model, writing_output


def test_params_of_the_nano_shape(capsys):
    assert main(["params", "--config", "nemotron3_nano_30b_a3b"]) == 0
    out = capsys.readouterr().out
    assert "total 31.58B" in out and "active 3.58B" in out


def test_overrides_change_the_config(capsys):
    assert main(["params", "--config", "tiny", "--config.model.hidden_size=32"]) == 0
    total = ej.count_params(ej.load_config("tiny", ["model.hidden_size=32"]))[0]
    assert f"({total:,})" in capsys.readouterr().out


def test_init_export_import_generate_round_trip(tmp_path, capsys):
    assert main(["init", "--config", "tiny", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert main(["export-hf", "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "generation_config.json").exists()
    assert main(["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "m2")]) == 0
    cfg, params, _ = load_model(tmp_path / "m")
    cfg2, params2, _ = load_model(tmp_path / "m2")
    assert cfg2.pattern == cfg.pattern
    tokens = np.array([[1, 7, 9, 11]])
    np.testing.assert_array_equal(np.asarray(ej.apply(cfg, params, tokens)),
                                  np.asarray(ej.apply(cfg2, params2, tokens)))
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "m2"), "--prompt", "12+5=", "--max-new-tokens", "4"]) == 0


def test_bad_config_is_one_clear_error(capsys):
    assert main(["params", "--config", "tiny", "--config.model.pattern=M*Q"]) == 2
    err = capsys.readouterr().err
    assert "model.pattern" in err and "'Q'" in err and "Traceback" not in err
    assert main(["params", "--config", "no_such_config"]) == 2
    assert "known:" in capsys.readouterr().err


def test_a_failed_write_creates_nothing_and_an_overwrite_loses_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="disk full"), writing_output(target) as tmp:
        (tmp / "model.safetensors").write_text("partial")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []  # neither the output, its temporary twin, nor the parents made for it
    cfg = ej.load_config("tiny")
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), ej.param_shapes(cfg))
    save_model(tmp_path / "m", cfg, params)
    with pytest.raises(RuntimeError), writing_output(tmp_path / "m", overwrite=True):
        raise RuntimeError("interrupted")
    assert load_model(tmp_path / "m")[0] == cfg and [p.name for p in tmp_path.iterdir()] == ["m"]
    (tmp_path / "model.gguf").write_text("old")  # a single-file output: refused, or replaced when asked
    with pytest.raises(FileExistsError, match="model.gguf exists; .* --overwrite"):
        check_output(tmp_path / "model.gguf")
    assert check_output(tmp_path / "model.gguf", overwrite=True) == tmp_path / "model.gguf"

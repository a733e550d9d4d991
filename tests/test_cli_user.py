"""The command line as a new user meets it: every verb's --help, wrong paths, existing outputs, the README's
importance -> elastify flow, and `slice` reading only the sub-model's bytes.

Each case runs `elastic-jax` in a subprocess and checks the exit code, the one-line message and that nothing was
created or lost. The models are written once per module, in-process (small shapes).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.cli import VERBS, main
from elastic_jax.config import ConfigError
from elastic_jax.data import HFTokenizer
from elastic_jax.data.calibration import calibration_batches, calibration_source
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.model_io import load_model, read_metadata, save_model
from elastic_jax.storage_reads import count_bytes_read

README = Path(__file__).resolve().parent.parent / "README.md"
SCRIPT = Path(sys.executable).with_name("elastic-jax")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "elastic_jax.cli"]
# a parent wide enough that its arrays are split into chunks, with two Mamba B/C groups (strided head blocks)
WIDE = dict(hidden_size=288, intermediate_size=576, moe_intermediate_size=288, moe_shared_expert_intermediate_size=288,
            mamba_num_heads=10, mamba_head_dim=32, mamba_n_groups=2, num_attention_heads=10, num_key_value_heads=5,
            head_dim=32, n_routed_experts=10)
SUB = ElasticSpec(hidden_size=160, mamba_num_heads=6, num_attention_heads=6, intermediate_size=256,
                  n_routed_experts=4, moe_intermediate_size=160, moe_shared_expert_intermediate_size=160)


def _bpe(path: Path) -> Path:
    """A tiny byte-level BPE tokenizer.json (about 400 ids): a parent whose tokenizer is not the byte one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<think>", "</think>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["((7+5)*3)-4=<think>7+5=12;12*3=36;36-4=32</think>32", "def add(a, b): return a"] * 8,
                            trainer=trainer)
    tok.save(str(path))
    return path


def _random_params(cfg, seed: int) -> dict:
    """Small random weights of every declared shape (no compiled init: these files only need to be models)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), ej.param_shapes(cfg))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """parent (tiny checkpoint), hf (its Hugging Face export), hf_bpe (one with its own tokenizer), elastic (a wide
    parent + router whose trained 0.4 budget is SUB)."""
    root = tmp_path_factory.mktemp("models")
    cfg = ej.load_config("tiny")
    params = _random_params(cfg, 0)
    save_model(root / "parent", cfg, params)
    save_model(root / "run" / "checkpoints", cfg, params)  # a work directory, as pretrain leaves it
    ej.to_hf(cfg, params, root / "hf")
    bpe_cfg = cfg.replace(vocab_size=512)
    tok = _bpe(root / "hf_bpe.json")
    ej.to_hf(bpe_cfg, _random_params(bpe_cfg, 1), root / "hf_bpe")
    (root / "hf_bpe" / "tokenizer.json").write_text(tok.read_text())
    wide = cfg.replace(**WIDE)
    meta = {"elastic": {"router": {}, "specs": {"1": ElasticSpec().to_dict(), "0.4": SUB.to_dict()}}}
    save_model(root / "elastic", wide, {"model": _random_params(wide, 2), "router": {"w": np.zeros(4, np.float32)}},
               meta)
    return {"root": root, "parent": root / "parent", "hf": root / "hf", "hf_bpe": root / "hf_bpe",
            "elastic": root / "elastic", "cfg": cfg, "wide": wide}


def run_all(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run `elastic-jax <args>` for each command at once (they are independent) and wait for all."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for args in commands]
    out = []
    for args, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate()
        out.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time (to show nothing was created or lost)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.args, proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (proc.args, proc.stderr)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_help_of_the_command_and_every_verb(tmp_path):
    procs = run_all([["--help"], *([name, "--help"] for name in VERBS)], tmp_path)
    for proc in procs:
        assert proc.returncode == 0 and "usage: elastic-jax" in proc.stdout and not proc.stderr, proc
    assert "100/70/40%" in procs[0].stdout
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_one_line_and_creates_nothing(tmp_path):
    missing = "runs/missing/checkpoints"
    procs = run_all([["export-hf", "--checkpoint", missing, "--out", "out"],
                     ["generate", "--checkpoint", missing, "--prompt", "1+1="],
                     ["slice", "--checkpoint", missing, "--budget", "0.5", "--out", "out"],
                     ["importance", "--checkpoint", missing, "--out", "out"],
                     ["elastify", "--config", "tiny_elastic", "--parent", missing, "--workdir", "run"],
                     ["import-hf", "--hf", missing, "--out", "out"],
                     ["generate", "--hf", missing, "--prompt", "1+1="]], tmp_path)
    for proc in procs:
        one_line_error(proc, f"{missing}: no such directory")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_of_the_wrong_kind_says_what_it_is_and_what_takes_it(tmp_path, models):
    before = snapshot(models["root"])
    hf, ckpt = str(models["hf"]), str(models["parent"])
    procs = run_all([["export-hf", "--checkpoint", hf, "--out", "out"],
                     ["generate", "--checkpoint", hf, "--prompt", "1+1="],
                     ["slice", "--checkpoint", hf, "--budget", "0.5", "--out", "out"],
                     ["importance", "--hf", ckpt, "--out", "out"],
                     ["generate", "--hf", ckpt, "--prompt", "1+1="],
                     ["export-hf", "--checkpoint", str(models["root"] / "run"), "--out", "out"]], tmp_path)
    for proc in procs[:3]:
        one_line_error(proc, "is a Hugging Face model directory", "--hf", f"elastic-jax import-hf --hf {hf}")
    for proc in procs[3:5]:
        one_line_error(proc, "is an elastic_jax checkpoint", "--checkpoint")
    run_dir = models["root"] / "run"
    one_line_error(procs[5], "is a run's work directory", f"its checkpoints are in {run_dir / 'checkpoints'}")
    assert list(tmp_path.iterdir()) == [] and snapshot(models["root"]) == before


def test_every_writing_verb_refuses_a_non_empty_output(tmp_path, models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    writers = [["init", "--config", "tiny", "--out", str(out)],
               ["import-hf", "--hf", str(models["hf"]), "--out", str(out)],
               ["export-hf", "--checkpoint", str(models["parent"]), "--out", str(out)],
               ["importance", "--checkpoint", str(models["parent"]), "--out", str(out)],
               ["slice", "--checkpoint", str(models["elastic"]), "--budget", "0.4", "--out", str(out)]]
    before = snapshot(tmp_path)
    for proc in run_all(writers, tmp_path):
        one_line_error(proc, f"{out} exists and is not empty", "--overwrite")
    # --overwrite replaces only a directory that holds a model: the user's notes are never deleted
    for proc in run_all([[*args, "--overwrite"] for args in writers[:2]], tmp_path):
        one_line_error(proc, f"{out} holds files that are not a model")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_model_and_safetensors_are_ordinary_files(tmp_path, models):
    first, second = run_all([["export-hf", "--checkpoint", str(models["parent"]), "--out", "hf"],
                             ["slice", "--checkpoint", str(models["elastic"]), "--budget", "0.4", "--out", "sub"]],
                            tmp_path)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "hf" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    again, sliced = run_all([["export-hf", "--checkpoint", str(models["parent"]), "--out", "hf", "--dtype",
                              "bfloat16", "--overwrite"],
                             ["export-hf", "--checkpoint", "sub", "--out", "hf_sub"]], tmp_path)
    assert again.returncode == 0 and sliced.returncode == 0, (again.stderr, sliced.stderr)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf_sub", "sub"]  # nothing left aside


def test_importance_uses_the_parents_tokenizer_and_feeds_elastify(tmp_path, models):
    (proc,) = run_all([["importance", "--hf", str(models["hf_bpe"]), "--config", "tiny", "--out", "ranked",
                        "--batches", "1", "--batch-size", "2", "--seq-len", "32"]], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--parent ranked" in proc.stdout
    meta = read_metadata(tmp_path / "ranked")
    assert meta["tokenizer"] == HFTokenizer.from_file(models["hf_bpe"] / "tokenizer.json").to_dict()
    assert meta["elastic"]["ranking"]  # elastify finds the ranking and trains from this parent as it is
    # the README's flow: the ranked parent that importance writes is the one elastify is given
    lines = README.read_text().splitlines()
    ranked = re.search(r"--out (\S+)", next(line for line in lines if line.startswith("elastic-jax importance")))
    assert f"--parent {ranked.group(1)} " in next(line for line in lines if line.startswith("elastic-jax elastify"))


def test_calibration_batches_follow_the_checkpoint_and_the_experiment(models):
    bpe = HFTokenizer.from_file(models["hf_bpe"] / "tokenizer.json")
    data, tokenizer = calibration_source({"tokenizer": bpe.to_dict()}, 512)
    assert tokenizer.to_dict() == bpe.to_dict()
    (batch,) = calibration_batches(data, tokenizer, 1, 64, 2)
    assert batch["inputs"].shape == (2, 64) and batch["inputs"].max() >= 256  # BPE merges, not bytes
    only_reasoning = {"data": {"reasoning_weight": 1.0, "text_weight": 0.0}}
    assert calibration_source({"experiment": only_reasoning}, 264)[0].text_weight == 0.0
    assert calibration_source({"experiment": {"data": {}}}, 264, only_reasoning)[0].text_weight == 0.0
    with pytest.raises(ConfigError, match="vocab_size is 264"):
        calibration_source({"tokenizer": bpe.to_dict()}, 264)


def test_slice_reads_about_the_sub_models_bytes(tmp_path, models, capsys):
    _, full, _ = load_model(models["elastic"])
    ref, _ = slice_params(full["model"], models["wide"], SUB)
    sub_bytes = sum(x.nbytes for x in jax.tree.leaves(ref))
    full_bytes = sum(x.nbytes for x in jax.tree.leaves(full))
    with count_bytes_read() as counter:
        assert main(["slice", "--checkpoint", str(models["elastic"]), "--budget", "0.4", "--out",
                     str(tmp_path / "sub")]) == 0
    assert sub_bytes < 0.4 * full_bytes
    assert 0 < counter.bytes <= 1.25 * sub_bytes, (counter.bytes, sub_bytes, full_bytes)
    _, got, meta = load_model(tmp_path / "sub")
    jax.tree.map(np.testing.assert_array_equal, got, ref)
    assert meta["sliced_from"]["spec"] == SUB.to_dict()
    printed = capsys.readouterr()
    achieved = ej.count_params(SUB.apply_to(models["wide"]))[0] / ej.count_params(models["wide"])[0]
    assert f"budget 0.4: target 40.0% of the parent's total_params, achieved {achieved:.1%}" in printed.out
    assert "reading the sub-model of budget 0.4" in printed.err


def test_the_elastify_table_says_which_budget_nests_in_the_next(models):
    from elastic_jax.quickstart import elastify_report, nests_in

    wide = models["wide"]
    assert nests_in(SUB, ElasticSpec(), wide) and not nests_in(ElasticSpec(), SUB, wide)
    not_under_sub = ElasticSpec(hidden_size=192, mamba_num_heads=4)  # wider hidden than SUB, fewer Mamba heads
    figures = {"total_params": 1000, "active_params": 800, "total_fraction": 0.5, "zero_shot_loss": 2.0, "loss": 1.5,
               "tokens_per_s": 100.0}
    rows = [{"budget": b, "spec": s.to_dict(), **figures} for b, s in ((1.0, ElasticSpec()), (0.7, not_under_sub),
                                                                        (0.4, SUB))]
    lines = elastify_report({"budgets": rows, "step": 3}, models["elastic"]).splitlines()
    assert lines[0].split()[-2:] == ["nests", "in"] and lines[0].startswith("budget")
    assert lines[2].endswith(" -")  # the largest budget has nothing to nest in
    assert [line.split()[-2:] for line in lines[3:5]] == [["yes", "1"], ["NO", "0.7"]]
    assert '"step": 3' in lines[-1]


def test_generate_budget_says_what_the_path_is_and_a_config_typo_names_the_nearest_field(tmp_path, models):
    hf, parent = str(models["hf"]), str(models["parent"])
    generate = ["generate", "--prompt", "1+1=", "--budget", "0.4"]
    procs = run_all([[*generate, "--checkpoint", "/no/such/dir"], [*generate, "--checkpoint", hf],
                     [*generate, "--hf", hf], [*generate, "--checkpoint", parent],
                     ["params", "--config", "tiny", "--config.model.hidden_sizee=8"]], tmp_path)
    one_line_error(procs[0], "/no/such/dir: no such directory")
    one_line_error(procs[1], f"{hf} is a Hugging Face model directory", f"pass it as --hf {hf} without --budget")
    one_line_error(procs[2], "--budget: needs an elastic checkpoint (--checkpoint", f"--hf {hf} is a Hugging Face")
    one_line_error(procs[3], f"--budget needs an elastic checkpoint; {parent} is a plain model")
    typo = one_line_error(procs[4], "unknown field 'model.hidden_sizee' (did you mean 'hidden_size'?); allowed: [")
    assert "'hidden_size'" in typo.split("allowed: ")[1]  # the full list still follows
    assert list(tmp_path.iterdir()) == []

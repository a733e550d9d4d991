"""The experiment config tree: one error type naming dotted paths, overrides that reach every router knob, round
trips, no silently replaced values, and older layouts still read."""

from __future__ import annotations

import json

import pytest

from elastic_jax.cli import main
from elastic_jax.config import ConfigError
from elastic_jax.elastic.config import ElasticConfig
from elastic_jax.elastic.router import Router, RouterConfig, schedule
from elastic_jax.experiment import ExperimentConfig, load_config, load_experiment


def _parse(name: str, overrides=()) -> ExperimentConfig:
    return ExperimentConfig.from_dict(load_experiment(name, overrides))


@pytest.mark.parametrize("path", ["zzz", "model.hiden_size", "train.lrr", "data.text_path", "data.reasoning.stepz",
                                  "checkpoint.every", "mesh.pipeline", "elastic.stage3_steps",
                                  "elastic.router.gumbel_temperature"])
def test_unknown_field_at_any_depth_is_one_error_naming_the_dotted_path(path):
    with pytest.raises(ConfigError, match=rf"unknown field '{path}'( \(did you mean '\w+'\?\))?; allowed: \["):
        _parse("tiny_elastic", [f"{path}=1"])
    tree = _parse("tiny_elastic").to_dict()  # the same check on a plain dict, without overrides
    node = tree
    *sections, leaf = path.split(".")
    for part in sections:
        node = node[part]
    node[leaf] = 1
    with pytest.raises(ConfigError, match=rf"unknown field '{path}'"):
        ExperimentConfig.from_dict(tree)


def test_overrides_reach_every_router_knob():
    overrides = {"tau_start": 2.0, "tau_end": 0.1, "scale_start": 0.5, "scale_end": 4.0, "hard": False,
                 "attention_mode": "query_heads", "hidden_dim": 16, "lr_multiplier": 10.0, "loss_weight": 0.5,
                 "num_choices": 4, "min_fraction": 0.5, "width_multiple": 8, "heterogeneous": True, "tolerance": 0.1,
                 "metric": "active_params", "axes": ("hidden", "ffn"), "budgets": (1.0, 0.5), "nested": True}
    cfg = _parse("tiny_elastic", [f"--config.elastic.router.{k}={v!r}" for k, v in overrides.items()]
                 + ["elastic.stage2_weights=None"])
    router = cfg.elastic.router
    assert {k: getattr(router, k) for k in overrides} == overrides
    assert set(overrides) == {f for f in RouterConfig.__dataclass_fields__}  # every knob is covered here
    built = Router(cfg.model, router)  # the router is built from exactly these settings
    assert [a.name for a in built.axes] == ["hidden", "ffn"] and all(len(a.choices) <= 4 for a in built.axes)
    ends = [float(v) for p in (0.0, 1.0) for v in schedule(router, p)]  # the Gumbel schedules' ends
    assert ends == pytest.approx([2.0, 0.5, 0.1, 4.0])


def test_command_line_refuses_an_unknown_router_knob_before_doing_anything(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main(["elastify", "--config", "tiny_elastic", "--parent", str(tmp_path), "--workdir", str(workdir),
                 "--config.elastic.router.gumbel_scale=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown field 'elastic.router.gumbel_scale'" in err[0]
    assert not workdir.exists()


def test_round_trip_through_json():
    for name in ("tiny", "tiny_elastic", "small", "nemotron3_nano_30b_a3b"):
        cfg = _parse(name)
        again = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and hash(again.model) == hash(cfg.model)
    assert _parse("tiny_elastic").elastic.router == RouterConfig()  # the config file spells out the defaults


@pytest.mark.parametrize("override, match", [
    ("elastic.router.tau_end='cold'", r"elastic\.router\.tau_end: expected a number, got 'cold'"),
    ("elastic.router.tau_end=0.0", r"elastic\.router\.tau_end: must be a finite number > 0"),
    ("elastic.router.hard='yes'", r"elastic\.router\.hard: expected True or False"),
    ("elastic.router.attention_mode='heads'", r"elastic\.router\.attention_mode: must be one of \['kv_groups'"),
    ("elastic.router.budgets=(1.0, 1.5)", r"elastic\.router\.budgets: every budget must be in \(0, 1\]"),
    ("elastic.router.budgets=(0.7, 0.4)", r"elastic\.router\.budgets: must include the full model 1\.0"),
    ("elastic.router.width_multiple=2.5", r"elastic\.router\.width_multiple: expected an integer or None"),
    ("elastic.stage2_weights=(1.0,)", r"elastic\.stage2_weights: one weight per budget"),
    ("elastic.stage1_steps=-1", r"elastic\.stage1_steps: must be an integer >= 0"),
    ("train.lr='fast'", r"train\.lr: expected a number"),
    ("train.seq_len=2048", r"train\.seq_len: 2048 exceeds model\.max_position_embeddings"),
    ("model.hidden_size=2.5", r"model\.hidden_size: expected an integer"),
    ("model.pattern='M*Q'", r"model\.pattern: unknown block character"),
    ("data.reasoning.max_steps=0", r"data\.reasoning\.max_steps"),
    ("checkpoint.max_to_keep=0", r"checkpoint\.max_to_keep: must be an integer >= 1"),
    ("model.hidden_size.width=3", r"model\.hidden_size: .*not a section"),
])
def test_bad_values_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        _parse("tiny_elastic", [override])


def test_elastic_run_length_is_the_schedule_never_silently_replaced():
    cfg = _parse("tiny_elastic", ["elastic.stage1_steps=7", "elastic.stage2_steps=3", "train.warmup_steps=1"])
    assert cfg.train.total_steps == cfg.elastic.total_steps == 10  # derived, not set twice
    with pytest.raises(ConfigError, match=r"train\.total_steps: 600 conflicts with the elastic schedule.* = 10 "):
        _parse("tiny_elastic", ["train.total_steps=600", "elastic.stage1_steps=7", "elastic.stage2_steps=3"])
    assert _parse("tiny_elastic", ["train.total_steps=300"]).train.total_steps == 300  # agreeing is fine
    assert _parse("tiny").elastic is None and _parse("tiny").train.total_steps == 600  # pretraining keeps its own
    with pytest.raises(ConfigError, match="elastic: missing: elastify needs an elastic section"):
        _parse("tiny").require_elastic()


def test_older_flat_elastic_layout_is_still_read():
    flat = {"budgets": [1.0, 0.5], "metric": "total_params", "router_hidden": 32, "router_lr_multiplier": 10.0,
            "router_weight": 2.0, "tolerance": 0.1, "stage1_steps": 4, "stage2_steps": 0, "stage2_weights": None}
    cfg = ElasticConfig.from_dict(flat)  # e.g. the `elastic.train` metadata of checkpoints written before
    assert (cfg.router.budgets, cfg.router.hidden_dim, cfg.router.lr_multiplier, cfg.router.loss_weight,
            cfg.router.tolerance, cfg.total_steps) == ((1.0, 0.5), 32, 10.0, 2.0, 0.1, 4)
    # and the older override paths land in the router, with a warning
    moved = _parse("tiny_elastic", ["elastic.budgets=(1.0, 0.5)", "elastic.stage2_weights=None",
                                    "elastic.router_hidden=16"])
    assert moved.elastic.router.budgets == (1.0, 0.5) and moved.elastic.router.hidden_dim == 16
    with pytest.raises(ConfigError, match=r"set twice: 'elastic\.budgets' .* 'elastic\.router\.budgets'"):
        ElasticConfig.from_dict({"budgets": [1.0], "router": {"budgets": [1.0]}})


def test_model_config_reads_inf_and_lists():
    cfg = load_config("tiny")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["time_step_limit"][1] == "inf"
    assert type(cfg).from_dict(data) == cfg

"""The block-kind registry agrees with the modules it names: their declarations, their elastic axes, the config's
per-layer fields, and the paths its records name."""

from __future__ import annotations

import fnmatch

import pytest

from elastic_jax.config import BLOCK_TYPES, PER_LAYER_FIELDS
from elastic_jax.model.blocks import BLOCKS, frozen_names, kind_of_axis
from elastic_jax.model.declare import ELASTIC_AXES, by_name, elastic_axes_of
from elastic_jax.model.hybrid import make_mixer
from elastic_jax.train.optim import FROZEN_NAMES
from tests.model.helpers import PARITY_CONFIGS
from tests.model.random_configs import random_config

CONFIGS = [*PARITY_CONFIGS.values(), *(random_config(seed) for seed in range(6))]


def test_one_record_per_pattern_letter_with_the_configs_per_layer_fields():
    assert set(BLOCKS) == set(BLOCK_TYPES)
    assert {(f, letter) for letter, kind in BLOCKS.items() for f in kind.fields} == set(PER_LAYER_FIELDS.items())
    assert {kind_of_axis(name) for name in ELASTIC_AXES if name != "hidden"} <= set(BLOCKS)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.pattern)
def test_records_declare_what_the_modules_declare(cfg):
    """Each record's sizes give exactly the declarations the layer's module makes, and its elastic axes are those
    the declarations use."""
    for layer, letter in enumerate(cfg.pattern):
        kind = BLOCKS[letter]
        mixer = make_mixer(cfg, layer, ssd_impl="xla", moe_strategy="dense", name=None, parent=None)
        expected = {"M": {"ssd_impl": "xla"}, "E": {"strategy": "dense"}}.get(letter, {})
        assert type(mixer) is kind.mixer and {field for _, field in kind.options} == set(expected)
        assert {field: getattr(mixer, field) for field in expected} == expected
        decls = kind.declarations(cfg, layer)
        assert decls == mixer.declarations()
        assert kind.elastic == elastic_axes_of(decls)


def test_named_paths_exist():
    """Frozen buffers, quantisation exclusions and importance activations name declared weights (a typo fails)."""
    cfg = PARITY_CONFIGS["all_blocks"]
    for layer, letter in enumerate(cfg.pattern):
        kind = BLOCKS[letter]
        names = by_name(kind.declarations(cfg, layer))
        for pattern in (*kind.frozen, *kind.quant_excluded):
            assert any(fnmatch.fnmatchcase(n, pattern) or n.startswith(f"{pattern}/") for n in names), pattern
        for act in kind.importance:
            assert "/".join((*act.path, "kernel")) in names
    assert FROZEN_NAMES == frozen_names() == ("e_score_correction_bias",)

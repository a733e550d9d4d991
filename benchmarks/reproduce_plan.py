"""The rows of "Is nesting worth it?" (benchmarks/reproduce.py): what each trains, for how many tokens, after what.

One parent, pretrained for T tokens, is the teacher and the starting point of every other row:
- `elastic_fixed_x<p>_s<k>`: the parent elastified into budgets 1.0 / 0.7 / 0.4 for p x E tokens, seed k, each
  budget's architecture fixed from the first step to the router-free search's choice (the curve).
- `elastic_<setting>_x1_s<k>`: the other settings of the joint training at E (SETTINGS: the router of the old
  default, per-step budget sampling, ...): the measurements behind the configs' defaults.
- `minitron_<b>_x<p>_s<k>`: the parent permuted as elastic seed k's curve run at E permuted it, pruned to that run's
  deployed architecture of budget b and distilled alone for p x E / 2 tokens, so the two smaller sizes together
  cost p x E, the elastic run's tokens at point p.
- `twin_<b>_s<k>`: a model of that architecture trained from scratch for T + E tokens: the check that the parent
  is trained enough (its smaller twins do not beat it), and the answer to "as good as a model trained alone?".
The seed k varies the elastic run and the baselines, never the parent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections

from elastic_jax.config import ConfigError
from elastic_jax.experiment import apply_overrides

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "reproduce.py"
BUDGETS = (1.0, 0.7, 0.4)
SMALL_BUDGETS = (0.7, 0.4)

# The settings measured at E, each pinned in full so that a row means the same whatever the configs' defaults
# are. "router" is the elastic step every earlier version defaulted to (METHOD §5-6: the router picks each budget's
# architecture, fixed after half the steps; every budget each step, weights normalised, lr 1e-3). "fixed" fixes the
# architectures from the first step instead, to the router-free search's choice (elastic/search.py); the others
# change one more knob on top of "fixed", whose static slices are cheap enough to measure at three seeds each.
BASELINE = {"elastic.budget_search": False, "elastic.static_after": 0.5, "elastic.budget_sampling": False,
            "elastic.normalize_weights": True, "train.lr": 1e-3}
FIXED = {"elastic.budget_search": True}
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "router": ("router, architectures fixed after half the steps, joint weighted step, lr 1e-3 (the old default)",
               {}),
    "fixed": ("architectures fixed from the first step (router-free search)", FIXED),
    "fixed_sampling": ("fixed + per-step budget sampling (the full model with p = 0.33, else one budget by weight)",
                       {**FIXED, "elastic.budget_sampling": True}),
    "fixed_unnormalised": ("fixed + budget weights not normalised (the weighted sum)",
                           {**FIXED, "elastic.normalize_weights": False}),
    "fixed_lr_3e-3": ("fixed + learning rate 3e-3 (the parent's)", {**FIXED, "train.lr": 3e-3}),
}
REFERENCE = "router"  # what every other setting is compared with
CURVE = "fixed"  # the curve's setting: Minitron-style and the elastic run on the same shapes, fixed from step 0

@dataclasses.dataclass(frozen=True)
class Scale:
    """One size of the experiment. Steps count batches of train.global_batch rows; the parent and the twins use
    train.seq_len, the elastic stages their own lengths. E (the E point) is stage1 x len1 + stage2 x len2 tokens
    per row; point p trains round(p x stage) steps of each stage."""

    name: str
    pretrain_steps: int  # T
    stage1_steps: int  # the E point's
    stage2_steps: int
    points: tuple[float, ...]  # the curve's token counts in units of E (must include 1)
    seeds: tuple[int, ...]
    problems: int  # held-out reasoning problems per evaluation
    eval_batches: int  # held-out loss batches per evaluation
    settings: tuple[str, ...] = tuple(SETTINGS)
    overrides: tuple[str, ...] = ()  # applied to configs/reproduce.py (every row)
    elastic_overrides: tuple[str, ...] = ()  # applied to the elastic rows only


def load_reproduce(kind: str, overrides: tuple[str, ...] | list[str]) -> ml_collections.ConfigDict:
    """configs/reproduce.py's parent (kind "") or elastic ("elastic") experiment, with overrides."""
    spec = importlib.util.spec_from_file_location("elastic_jax_config_reproduce", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return apply_overrides(module.get_config(kind), list(overrides))


def setting_overrides(name: str) -> tuple[str, ...]:
    """The pinned overrides of one setting (BASELINE with its change)."""
    if name not in SETTINGS:
        raise ConfigError(f"setting {name!r}: must be one of {list(SETTINGS)}")
    return tuple(f"{k}={v!r}" for k, v in {**BASELINE, **SETTINGS[name][1]}.items())


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "pretrain" | "elastify" | "distill"
    method: str  # "parent" | "elastic" | "minitron" | "twin"
    seed: int = 0
    budget: float | None = None  # the size a twin or Minitron row trains
    point: float | None = None  # tokens in units of E (elastic and Minitron rows)
    setting: str | None = None  # elastic rows: a SETTINGS name or BEST
    deps: tuple[str, ...] = ()


def _fmt(p: float) -> str:
    return f"x{p:g}"


def elastic_name(setting: str, point: float, seed: int) -> str:
    return f"elastic_{setting}_{_fmt(point)}_s{seed}"


def plan(scale: Scale) -> list[Row]:
    """Every row, dependencies before dependents, seed by seed: each seed's curve (elastic and Minitron-style at E,
    then at the other points), its twins and its other settings, so that an experiment cut short has every part
    at the same number of seeds (the twins of the later seeds come last: they are the longest rows)."""
    if 1.0 not in scale.points or CURVE not in scale.settings or REFERENCE not in scale.settings:
        raise ConfigError(f"scale {scale.name}: points must include 1 and settings {CURVE!r} and {REFERENCE!r}")
    first = elastic_name(CURVE, 1.0, scale.seeds[0])

    def elastic(setting: str, p: float, k: int) -> Row:  # the search runs once, in the first row
        searched = SETTINGS[setting][1].get("elastic.budget_search") and elastic_name(setting, p, k) != first
        return Row(elastic_name(setting, p, k), "elastify", "elastic", k, point=p, setting=setting,
                   deps=("parent", first) if searched else ("parent",))

    def twins(k: int) -> list[Row]:
        return [Row(f"twin_{b:g}_s{k}", "pretrain", "twin", k, b, deps=(elastic_name(CURVE, 1.0, k),))
                for b in SMALL_BUDGETS]

    rows = [Row("parent", "pretrain", "parent")]
    for k in scale.seeds:
        for p in sorted(scale.points, key=lambda p: p != 1.0):  # E first
            rows.append(elastic(CURVE, p, k))
            rows += [Row(f"minitron_{b:g}_{_fmt(p)}_s{k}", "distill", "minitron", k, b, p,
                         deps=("parent", elastic_name(CURVE, 1.0, k))) for b in SMALL_BUDGETS]
        rows += twins(k) if k == scale.seeds[0] else []  # long rows early: they run beside the settings
        rows += [elastic(s, 1.0, k) for s in scale.settings if s != CURVE]
    return rows + [row for k in scale.seeds[1:] for row in twins(k)]


def elastic_steps(scale: Scale, point: float) -> tuple[int, int]:
    """(stage-1, stage-2) steps of an elastic run at `point` x E."""
    return round(point * scale.stage1_steps), round(point * scale.stage2_steps)


def e_steps(scale: Scale) -> int:
    """E in steps of train.seq_len rows: the E-point elastic run's tokens / (batch x seq_len)."""
    seq = load_reproduce("", scale.overrides).train.seq_len
    el = load_reproduce("elastic", [*scale.overrides, *scale.elastic_overrides]).elastic
    tokens = scale.stage1_steps * el.stage1_seq_len + scale.stage2_steps * el.stage2_seq_len
    if tokens % seq:
        raise ConfigError(f"the elastic stages' tokens per row ({tokens}) must be a multiple of train.seq_len ({seq})")
    return tokens // seq


def row_steps(scale: Scale, row: Row) -> int:
    """Optimizer steps a row trains."""
    if row.kind == "elastify":
        return sum(elastic_steps(scale, row.point))
    if row.method == "parent":
        return scale.pretrain_steps
    if row.method == "twin":
        return scale.pretrain_steps + e_steps(scale)
    return max(1, round(row.point * e_steps(scale) / 2))  # Minitron: each size gets half of the pair's tokens


def row_tokens(scale: Scale, row: Row) -> int:
    """Training tokens the row cost (rows x sequence length per step, summed)."""
    train = load_reproduce("", scale.overrides).train
    if row.kind == "elastify":
        el = load_reproduce("elastic", [*scale.overrides, *scale.elastic_overrides]).elastic
        s1, s2 = elastic_steps(scale, row.point)
        return train.global_batch * (s1 * el.stage1_seq_len + s2 * el.stage2_seq_len)
    return train.global_batch * train.seq_len * row_steps(scale, row)

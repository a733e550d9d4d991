"""The QAD loss: every budget of an elastic checkpoint distilled at once through fake-quantised weights
(quant/qad.py), the step loss of `elastic-jax qad` (train/qad.py).

The loss: for each budget b (its architecture fixed, as the engine serves it), forward KL from the teacher's logits
to the fake-quantised student's, weighted over budgets. The teacher is either each budget's own unquantised slice
(`teacher="budget"`, the default: QAD recovers what quantisation lost at that budget) or the unquantised parent
(`teacher="parent"`, the elastification's target).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError, ElasticSpec
from elastic_jax.model.functional import build
from elastic_jax.quant.qad import check_format, fake_quantize_params
from elastic_jax.train.losses import cross_entropy, kl_forward

TEACHERS = ("budget", "parent")


@dataclasses.dataclass(frozen=True)
class QADLoss:
    """Static settings of the QAD loss (hashable: one compiled step): each budget's fixed architecture and weight,
    the format, the teacher ("budget" or "parent"), the KD temperature and the exclusions (None: NVIDIA's)."""

    fmt: str
    budgets: tuple[float, ...]
    specs: tuple[ElasticSpec, ...]
    weights: tuple[float, ...]
    teacher: str = "budget"
    temperature: float = 1.0
    excluded: tuple[str, ...] | None = None

    def __post_init__(self):
        check_format(self.fmt)
        if self.teacher not in TEACHERS:
            raise ElasticError(f"qad teacher: {self.teacher!r}; allowed: {list(TEACHERS)}")
        if not len(self.budgets) == len(self.specs) == len(self.weights) or not self.budgets:
            raise ElasticError("qad: one architecture and one weight per budget are needed")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ElasticError(f"qad weights must be non-negative with a positive sum, got {list(self.weights)}")


def _logits(cfg: ModelConfig, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return build(cfg).apply({"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"))[0]


def budget_figures(cfg: ModelConfig, lc: QADLoss, params: Any, teacher: Any, batch: dict[str, jax.Array], *,
                   quantise: bool = True) -> dict[str, jax.Array]:
    """Per budget on one batch: `kd/<b>` (forward KL from the teacher), `ce/<b>` (next-token cross-entropy) of the
    student cut from `params` (fake-quantised first when `quantise`), and `tokens`."""
    student = fake_quantize_params(params, cfg, lc.fmt, lc.excluded) if quantise else params
    parent_logits = _logits(cfg, teacher, batch) if lc.teacher == "parent" else None
    out: dict[str, jax.Array] = {}
    for budget, spec in zip(lc.budgets, lc.specs):
        with jax.named_scope(f"budget_{budget:g}"):
            sub, sub_cfg = slice_params(student, cfg, spec)
            logits = _logits(sub_cfg, sub, batch)
            target = parent_logits if parent_logits is not None else _logits(
                sub_cfg, slice_params(teacher, cfg, spec)[0], batch)
        out[f"kd/{budget:g}"] = kl_forward(jax.lax.stop_gradient(target), logits, batch["loss_mask"], lc.temperature)
        out[f"ce/{budget:g}"], out["tokens"] = cross_entropy(logits, batch["targets"], batch["loss_mask"])
    return out


def qad_loss(cfg: ModelConfig, lc: QADLoss, params: Any, teacher: Any, batch: dict[str, jax.Array]
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum_b w_b * KD_b / sum_b w_b, per-budget figures) of the fake-quantised student `params` against the
    frozen `teacher` (both parent trees)."""
    figures = budget_figures(cfg, lc, params, teacher, batch)
    total = sum(w * figures[f"kd/{b:g}"] for b, w in zip(lc.budgets, lc.weights)) / sum(lc.weights)
    return total, {k: v for k, v in figures.items() if k != "tokens"}

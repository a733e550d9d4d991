"""How the training forward pass runs the layer stack: rematerialisation, and a scan over repeated layer groups.

Both change how the program is built, never what it computes (logits and gradients equal the plain loop's):

- `remat`: each block's activations are recomputed in the backward pass instead of kept. "block" keeps only each
  block's input (the least memory, about one more forward pass of compute); "dots" also keeps the outputs of
  the matrix products that have no batch dimension (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
- `scan_layers`: a stretch of layers that repeats a unit (Nemotron-H's "EMEMEM*" four times over) runs as one
  `lax.scan` over the unit's stacked parameters, so the compiler sees the unit once instead of every layer: the
  compile time of the 52-layer Nano shape stops growing with depth. Layers repeat only when their kind, their
  parameter shapes and their elastic masks' shapes are equal. The stacked parameters are one extra copy of the
  scanned layers' weights inside the step.

Only the full-sequence pass without a cache uses this (training, evaluation losses); decoding and
initialisation always run the plain loop, and the parameter tree is the same either way (`layers_<i>`).
MoE layers do not `sow` their routed-row counts through this path. This file plans; model/hybrid.py
(`run_layers`) runs the stack by the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
MAX_UNIT = 8  # the longest repeated unit looked for (layers)


class LayerExecutionError(ValueError):
    """An unknown rematerialisation policy or a non-boolean scan setting."""


@dataclasses.dataclass(frozen=True)
class LayerExecution:
    """remat: one of REMAT_POLICIES; scan_layers: scan over repeated layer groups (hashable, static)."""

    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise LayerExecutionError(f"remat: {self.remat!r}; allowed: {', '.join(REMAT_POLICIES)}")
        if not isinstance(self.scan_layers, bool):
            raise LayerExecutionError(f"scan_layers: must be true or false, got {self.scan_layers!r}")

    @property
    def plain(self) -> bool:
        return self.remat == "none" and not self.scan_layers


PLAIN = LayerExecution()


@dataclasses.dataclass(frozen=True)
class Segment:
    """Layers start .. start + unit * reps - 1: `reps` repetitions of a `unit`-layer group (reps 1: no scan)."""

    start: int
    unit: int
    reps: int

    def layers(self, rep: int) -> range:
        first = self.start + rep * self.unit
        return range(first, first + self.unit)


def plan_segments(signatures: list[tuple], max_unit: int = MAX_UNIT) -> list[Segment]:
    """Cover the layers with single layers and repeated units so that the fewest layer bodies are compiled
    (a scanned segment costs its unit's length, plus a little so that a plain layer is preferred on ties)."""
    n = len(signatures)
    best: list[tuple[float, Segment | None]] = [(0.0, None)] + [(float("inf"), None)] * n
    for end in range(1, n + 1):
        best[end] = (best[end - 1][0] + 1.0, Segment(end - 1, 1, 1))
        for unit in range(1, min(max_unit, end // 2) + 1):
            reps = 1
            while (reps + 1) * unit <= end:
                start = end - (reps + 1) * unit
                if any(signatures[start + k] != signatures[start + unit + k] for k in range(unit)):
                    break
                reps += 1
                cost = best[start][0] + unit + 0.5
                if cost < best[end][0]:
                    best[end] = (cost, Segment(start, unit, reps))
    segments, end = [], n
    while end:
        seg = best[end][1]
        segments.append(seg)
        end = seg.start
    return segments[::-1]

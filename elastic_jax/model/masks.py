"""The elastic masks of the masked forward, as a typed pytree.

A field left None costs nothing (that part of the computation is the plain one); `Masks()` is the plain model.
What a value m does (hard 0/1 masks reproduce a static slice exactly, see elastic_jax/elastic/slicing.py):
hidden: the embedding and every mixer output are multiplied by m, and every RMSNorm takes the m-weighted mean of
x^2; heads / neurons: their output is multiplied by m (Mamba's gated group norm averages over the kept channels
of each group); experts: an expert with m <= 0 is not a routing candidate and a chosen expert's weight is
multiplied by m; depth: the layer's mixer output is multiplied by the gate (0 makes the block an identity).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import struct

Array = Any


@struct.dataclass
class LayerMasks:
    """One layer's masks; each layer kind reads its own fields (see ELASTIC_AXES in model/declare.py).

    mamba_heads [H] (B/C-group major); attention_heads [Hq] (KV-group major); ffn [F]; experts [E];
    expert_ffn [F_e]; shared_ffn [F_s]; depth: scalar gate on the mixer output.
    """

    depth: Array | None = None
    mamba_heads: Array | None = None
    attention_heads: Array | None = None
    ffn: Array | None = None
    experts: Array | None = None
    expert_ffn: Array | None = None
    shared_ffn: Array | None = None

    def get(self, name: str) -> Array | None:
        """The mask of elastic axis `name` (None when unset)."""
        return getattr(self, name)

    def set(self, **masks: Array) -> LayerMasks:
        return dataclasses.replace(self, **masks)


NO_LAYER_MASKS = LayerMasks()


@struct.dataclass
class Masks:
    """The model's masks: `hidden` [hidden_size] and one LayerMasks per layer (None: no layer masks)."""

    hidden: Array | None = None
    layers: tuple[LayerMasks, ...] | None = None

    def layer(self, index: int) -> LayerMasks:
        return NO_LAYER_MASKS if self.layers is None else self.layers[index]


LAYER_MASK_FIELDS = tuple(f.name for f in dataclasses.fields(LayerMasks))

__all__ = ["LAYER_MASK_FIELDS", "LayerMasks", "Masks", "NO_LAYER_MASKS"]

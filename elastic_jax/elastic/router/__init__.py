"""The learnable router: budget -> per-axis width choices, as Gumbel-softmax masks, with a resource loss.

One small MLP per elastic axis maps a one-hot of the budget index (linearly interpolated for a budget between
two trained ones) to logits over that axis's candidate widths (times the number of layers when heterogeneous).
Training samples Gumbel-softmax probabilities pi (temperature annealed 1.0 -> 0.05, logits scaled 1 -> 10);
the mask of an axis is sum_i pi_i * prefix_mask_i (soft), or the argmax prefix with straight-through gradients
(hard). Deployment takes the argmax choice as an ElasticSpec. The resource loss compares the *expected*
configuration (expected width = pi . choices) with the target through the accounting module, so the router and
every report count parameters and memory the same way.
"""

from elastic_jax.elastic.router.candidates import (
    FIELD_OF_AXIS,
    GROUPED_AXES,
    KIND_OF_AXIS,
    Axis,
    aligned_widths,
    build_axes,
    choice_masks,
    width_multiple,
)
from elastic_jax.elastic.router.chain import larger_budget
from elastic_jax.elastic.router.config import MAX_WIDTH_MULTIPLE, ROUTER_AXES, RouterConfig
from elastic_jax.elastic.router.mlp import budget_code, init_router, router_logits
from elastic_jax.elastic.router.repair import argmax_picks, argmax_spec, spec_from_picks
from elastic_jax.elastic.router.resource import expected_config, resource_loss, tolerance_for
from elastic_jax.elastic.router.router import Router
from elastic_jax.elastic.router.sampling import masks_from_probs, sample_probs, schedule

__all__ = [
    "FIELD_OF_AXIS", "GROUPED_AXES", "KIND_OF_AXIS", "MAX_WIDTH_MULTIPLE", "ROUTER_AXES", "Axis", "Router",
    "RouterConfig", "aligned_widths", "argmax_picks", "argmax_spec", "budget_code", "build_axes", "choice_masks",
    "expected_config", "init_router", "larger_budget", "masks_from_probs", "resource_loss", "router_logits",
    "sample_probs", "schedule", "spec_from_picks", "tolerance_for", "width_multiple",
]

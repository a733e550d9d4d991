"""The learnable router: budget -> per-axis width choices, as Gumbel-softmax masks, with a resource loss.

One small MLP per elastic axis maps a one-hot of the budget index (linearly interpolated for a budget between
two trained ones) to logits over that axis's candidate widths (times the number of layers when heterogeneous).
Training samples Gumbel-softmax probabilities pi (temperature annealed 1.0 -> 0.05, logits scaled 1 -> 10);
the mask of an axis is sum_i pi_i * prefix_mask_i (soft), or the argmax prefix with straight-through gradients
(hard). Deployment takes the argmax choice as an ElasticSpec. The resource loss compares the *expected*
configuration (expected width = pi . choices) with the target through the accounting module, so the router and
every report count parameters and memory the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.slicing import spec_masks
from elastic_jax.elastic.spec import WIDTH_FIELDS, Budget, ElasticError, ElasticSpec, round_width

MAX_WIDTH_MULTIPLE = 128  # TPU lanes; also whole AVX-512 vectors and tensor-core tiles
ROUTER_AXES = ("hidden", "mamba_heads", "attention_heads", "ffn", "experts", "expert_ffn", "shared_ffn")
_FIELD_OF_AXIS = {"hidden": "hidden_size", **{axis: field for field, (axis, _) in WIDTH_FIELDS.items()}}
_GROUPED_AXES = ("mamba_heads", "attention_heads", "experts")  # sized in whole heads / groups, not aligned
_KIND_OF_AXIS = {axis: kind for _, (axis, kind) in WIDTH_FIELDS.items()}


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """Budgets (fractions of the parent under `metric`), axes, candidate grid and schedules of the router."""

    budgets: tuple[float, ...] = (1.0, 0.7, 0.4)
    metric: str = "total_params"
    axes: tuple[str, ...] = ROUTER_AXES
    num_choices: int = 8
    min_fraction: float = 0.25
    width_multiple: int | None = None
    heterogeneous: bool = False
    hidden_dim: int = 128
    tau_start: float = 1.0
    tau_end: float = 0.05
    scale_start: float = 1.0
    scale_end: float = 10.0
    tolerance: float = 0.05
    hard: bool = True
    attention_mode: str = "kv_groups"

    def __post_init__(self):
        budgets = tuple(float(b) for b in self.budgets)
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "axes", tuple(self.axes))
        if not budgets:
            raise ElasticError("router.budgets: at least one budget is needed")
        for b in budgets:
            if not 0.0 < b <= 1.0:
                raise ElasticError(f"router.budgets: every budget must be in (0, 1], got {b}")
        if len(set(budgets)) != len(budgets):
            raise ElasticError(f"router.budgets: duplicated budget(s) in {list(budgets)}")
        Budget(budgets[0], self.metric)  # validates the metric name
        unknown = sorted(set(self.axes) - set(ROUTER_AXES))
        if unknown:
            raise ElasticError(f"router.axes: unknown axis {unknown}; allowed: {list(ROUTER_AXES)}")
        if self.num_choices < 2:
            raise ElasticError(f"router.num_choices must be >= 2, got {self.num_choices}")
        if not 0.0 < self.min_fraction < 1.0:
            raise ElasticError(f"router.min_fraction must be in (0, 1), got {self.min_fraction}")
        multiple = self.width_multiple
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise ElasticError(f"router.width_multiple must be a positive integer (1: exact fractions) or None "
                               f"(the coarsest power of two up to {MAX_WIDTH_MULTIPLE} that keeps num_choices "
                               f"distinct widths), got {multiple!r}")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One routed axis: its candidate widths (descending, first = the parent's), the layers it covers, and the
    prefix mask of every candidate ([num_choices, size], from spec_masks so masks equal slices)."""

    name: str
    layers: tuple[int, ...]
    choices: tuple[int, ...]
    heterogeneous: bool

    @property
    def rows(self) -> int:
        return len(self.layers) if self.heterogeneous else 1


def width_multiple(full: int, rc: RouterConfig) -> int:
    """Granularity of a neuron/channel axis's candidates: `rc.width_multiple`, or by default the coarsest power of
    two (up to MAX_WIDTH_MULTIPLE) whose steps still separate all num_choices fractions of `full`. Aligned widths
    keep a sliced model's matrix products on whole vector registers and tiles: the static-slice joint step of
    `small` is about 4% faster than with exact fractions such as 457 or 183."""
    if rc.width_multiple is not None:
        return rc.width_multiple
    spacing = (1.0 - rc.min_fraction) * full / (rc.num_choices - 1)
    multiple = MAX_WIDTH_MULTIPLE
    while multiple > 1 and multiple > spacing:
        multiple //= 2
    return multiple


def aligned_widths(full: int, rc: RouterConfig) -> tuple[int, ...]:
    """Descending distinct candidates of a neuron/channel axis: the parent's width, then each fraction of
    np.linspace(1, min_fraction, num_choices) rounded to the nearest multiple of width_multiple(full, rc)."""
    multiple = width_multiple(full, rc)
    widths = {full}
    for f in np.linspace(1.0, rc.min_fraction, rc.num_choices)[1:]:
        widths.add(int(min(full, max(multiple, np.floor(f * full / multiple + 0.5) * multiple))))  # ties up
    return tuple(sorted(widths, reverse=True))


def build_axes(cfg: ModelConfig, rc: RouterConfig) -> tuple[Axis, ...]:
    """The axes of `rc.axes` that the parent has, each with its grid of valid candidate widths (heads and experts
    in whole groups, neurons and channels aligned: `aligned_widths`)."""
    fractions = np.linspace(1.0, rc.min_fraction, rc.num_choices)
    axes = []
    for name in rc.axes:
        if name == "hidden":
            axes.append(Axis(name, (), aligned_widths(cfg.hidden_size, rc), False))
            continue
        layers = tuple(i for i, c in enumerate(cfg.pattern) if c == _KIND_OF_AXIS[name])
        if not layers:
            continue
        field = _FIELD_OF_AXIS[name]
        if len({cfg.width(field, i) for i in layers}) > 1:
            raise ElasticError(f"router: the parent's {field} differs between layers; routing needs one parent width")
        if name in _GROUPED_AXES:
            choices = tuple(sorted({round_width(cfg, field, layers[0], f, rc.attention_mode) for f in fractions},
                                   reverse=True))
        else:
            choices = aligned_widths(cfg.width(field, layers[0]), rc)
        if len(choices) > 1:
            axes.append(Axis(name, layers, choices, rc.heterogeneous))
    return tuple(axes)


def choice_masks(cfg: ModelConfig, axis: Axis, attention_mode: str) -> np.ndarray:
    """[num_choices, size] prefix masks of an axis's candidates (taken from spec_masks of one-axis specs)."""
    rows = []
    for width in axis.choices:
        masks = spec_masks(cfg, ElasticSpec(**{_FIELD_OF_AXIS[axis.name]: width}, attention_mode=attention_mode))
        rows.append(masks["hidden"] if axis.name == "hidden" else masks["layers"][axis.layers[0]][axis.name])
    return np.stack(rows)


def init_router(key: jax.Array, cfg: ModelConfig, rc: RouterConfig) -> dict:
    """Router parameters: per axis a two-layer MLP from the budget one-hot to [rows * choices] logits."""
    params = {}
    n = len(rc.budgets)
    for axis, k in zip(build_axes(cfg, rc), jax.random.split(key, len(rc.axes))):
        k1, k2 = jax.random.split(k)
        out = axis.rows * len(axis.choices)
        params[axis.name] = {"w1": jax.random.normal(k1, (n, rc.hidden_dim)) * (1.0 / np.sqrt(n)),
                             "b1": jnp.zeros((rc.hidden_dim,)),
                             "w2": jax.random.normal(k2, (rc.hidden_dim, out)) * (0.01 / np.sqrt(rc.hidden_dim)),
                             "b2": jnp.zeros((out,))}
    return params


def budget_code(rc: RouterConfig, budget: float) -> np.ndarray:
    """One-hot of a trained budget, or the linear interpolation of its two neighbours' one-hots."""
    b = np.asarray(rc.budgets)
    code = np.zeros(len(b), np.float32)
    exact = np.flatnonzero(np.isclose(b, budget))
    if exact.size:
        code[exact[0]] = 1.0
        return code
    if not b.min() < budget < b.max():
        raise ElasticError(f"budget {budget} is outside the trained range [{b.min()}, {b.max()}]")
    above = min((i for i in range(len(b)) if b[i] > budget), key=lambda i: b[i])
    below = max((i for i in range(len(b)) if b[i] < budget), key=lambda i: b[i])
    t = (budget - b[below]) / (b[above] - b[below])
    code[above], code[below] = t, 1.0 - t
    return code


def router_logits(params: dict, code: jax.Array, axes: Sequence[Axis]) -> dict[str, jax.Array]:
    """Per-axis logits [rows, choices] for a budget code."""
    out = {}
    for axis in axes:
        p = params[axis.name]
        h = jax.nn.leaky_relu(code @ p["w1"] + p["b1"])
        out[axis.name] = (h @ p["w2"] + p["b2"]).reshape(axis.rows, len(axis.choices))
    return out


def schedule(rc: RouterConfig, progress: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(temperature, logit scale) at training progress in [0, 1]: exponential anneal, linear rise."""
    progress = jnp.clip(progress, 0.0, 1.0)
    tau = rc.tau_start * (rc.tau_end / rc.tau_start) ** progress
    return tau, rc.scale_start + (rc.scale_end - rc.scale_start) * progress


def sample_probs(logits: jax.Array, key: jax.Array | None, tau: jax.Array, scale: jax.Array, hard: bool) -> jax.Array:
    """Gumbel-softmax probabilities over choices; `hard` gives the argmax one-hot with straight-through grads."""
    # Standardised logits: the schedule alone sets how sharp the choice is, so large router weights cannot
    # saturate the softmax (and kill its gradient) before the resource loss has been met.
    z = (logits - logits.mean(-1, keepdims=True)) / (logits.std(-1, keepdims=True) + 1e-6) * scale
    if key is not None:
        z = z + jax.random.gumbel(key, z.shape)
    probs = jax.nn.softmax(z / tau, axis=-1)
    if not hard:
        return probs
    one_hot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=probs.dtype)
    return one_hot + probs - jax.lax.stop_gradient(probs)


class _ExpectedConfig:
    """A ModelConfig look-alike whose elastic widths are (traced) expected values, so the accounting functions
    give the expected parameter count / memory of a router distribution (differentiably)."""

    def __init__(self, cfg: ModelConfig, widths: dict[str, Any], per_layer: dict[str, dict[int, Any]]):
        self._cfg, self._widths, self._per_layer = cfg, widths, per_layer

    def __getattr__(self, name: str):
        return getattr(self._cfg, name)

    @property
    def hidden_size(self):
        return self._widths.get("hidden_size", self._cfg.hidden_size)

    def width(self, name: str, layer: int):
        if name == "num_key_value_heads" and layer in self._per_layer.get("num_attention_heads", {}):
            cfg = self._cfg
            per_group = cfg.width("num_attention_heads", layer) // cfg.width("num_key_value_heads", layer)
            return self._per_layer["num_attention_heads"][layer] / per_group
        return self._per_layer.get(name, {}).get(layer, self._cfg.width(name, layer))

    def mamba_heads(self, layer: int):
        return self.width("mamba_num_heads", layer)


def expected_config(cfg: ModelConfig, axes: Sequence[Axis], probs: dict[str, jax.Array]) -> _ExpectedConfig:
    """The expected configuration (width = pi . choices per axis and layer) of a router distribution."""
    widths: dict[str, Any] = {}
    per_layer: dict[str, dict[int, Any]] = {}
    for axis in axes:
        expected = probs[axis.name] @ jnp.asarray(axis.choices, jnp.float32)  # [rows]
        field = _FIELD_OF_AXIS[axis.name]
        if axis.name == "hidden":
            widths[field] = expected[0]
        else:
            per_layer[field] = {layer: expected[i if axis.heterogeneous else 0] for i, layer in enumerate(axis.layers)}
    return _ExpectedConfig(cfg, widths, per_layer)


def resource_loss(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], probs: dict[str, jax.Array],
                  budget: float) -> tuple[jax.Array, jax.Array]:
    """(loss, ratio): ratio = measure(expected config) / (budget * measure(parent)); loss = |ratio - 1|, zero
    within the tolerance (none for budget 1.0, which this pushes to every axis's largest choice)."""
    metric = Budget(budget, rc.metric)
    ratio = metric.measure(expected_config(cfg, axes, probs)) / metric.target(cfg)
    gap = jnp.abs(ratio - 1.0)
    return jnp.where(gap <= tolerance_for(rc, budget), 0.0, gap), ratio


def tolerance_for(rc: RouterConfig, budget: float) -> float:
    """The resource tolerance of a budget: none for the full model, which must stay the whole parent."""
    return 0.0 if budget >= 1.0 else rc.tolerance


def masks_from_probs(cfg: ModelConfig, axes: Sequence[Axis], probs: dict[str, jax.Array],
                     choice_mask_table: dict[str, np.ndarray]) -> dict:
    """The model's mask pytree (see NemotronH) for a router distribution: sum_i pi_i * prefix_mask_i."""
    hidden = jnp.ones((cfg.hidden_size,), jnp.float32)
    layers: list[dict[str, jax.Array]] = [{} for _ in range(cfg.num_layers)]
    for axis in axes:
        mask = probs[axis.name] @ jnp.asarray(choice_mask_table[axis.name])  # [rows, size]
        if axis.name == "hidden":
            hidden = mask[0]
        else:
            for i, layer in enumerate(axis.layers):
                layers[layer][axis.name] = mask[i if axis.heterogeneous else 0]
    return {"hidden": hidden, "layers": layers}


def spec_from_picks(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], picks: dict[str, np.ndarray]
                    ) -> ElasticSpec:
    """The ElasticSpec of one choice index per axis (and layer, when heterogeneous)."""
    fields: dict[str, Any] = {}
    for axis in axes:
        field = _FIELD_OF_AXIS[axis.name]
        if axis.heterogeneous:
            per_layer = [cfg.width(field, i) if cfg.pattern[i] == _KIND_OF_AXIS[axis.name] else 0
                         for i in range(cfg.num_layers)]
            for i, layer in enumerate(axis.layers):
                per_layer[layer] = int(axis.choices[picks[axis.name][i]])
            fields[field] = tuple(per_layer)
        else:
            fields[field] = int(axis.choices[picks[axis.name][0]])
    return ElasticSpec(**fields, attention_mode=rc.attention_mode).validate(cfg)


def argmax_spec(cfg: ModelConfig, rc: RouterConfig, axes: Sequence[Axis], logits: dict[str, jax.Array],
                budget: float | None = None) -> ElasticSpec:
    """The deployment architecture of a budget: the argmax choice of every axis (and layer).

    With `budget` given and the argmax outside the tolerance, the nearest in-tolerance architecture is taken:
    one choice step at a time towards the target, on the axis whose next choice the router rates highest among
    the steps that land inside the tolerance or, when none does, among those that bring the size closer (so a
    coarse step cannot jump over the band and back), so a trained router's preferences still decide which axes
    give way.
    """
    picks = {a.name: np.asarray(jnp.argmax(logits[a.name], axis=-1)) for a in axes}
    spec = spec_from_picks(cfg, rc, axes, picks)
    if budget is None:
        return spec
    metric = Budget(budget, rc.metric)
    target = metric.target(cfg)
    tolerance = tolerance_for(rc, budget) + 1e-12
    ratio_of = lambda s: metric.measure(s.apply_to(cfg)) / target  # noqa: E731
    log_probs = {a.name: np.asarray(jax.nn.log_softmax(logits[a.name], axis=-1)) for a in axes}
    ratio = ratio_of(spec)
    while abs(ratio - 1.0) > tolerance:
        moves = []
        for log_prob, moved in _neighbours(axes, picks, log_probs, steps=(1 if ratio > 1.0 else -1,)):
            moved_spec = spec_from_picks(cfg, rc, axes, moved)  # choices are descending: +1 is smaller
            moves.append((log_prob, ratio_of(moved_spec), moved, moved_spec))
        inside = [m for m in moves if abs(m[1] - 1.0) <= tolerance]
        closer = [m for m in moves if abs(m[1] - 1.0) < abs(ratio - 1.0)]
        if not (inside or closer):
            return _nearby_repair(cfg, rc, axes, picks, log_probs, ratio_of, tolerance) or spec
        _, ratio, picks, spec = max(inside or closer, key=lambda m: m[0])
    return spec


def _neighbours(axes: Sequence[Axis], picks: dict[str, np.ndarray], log_probs: dict[str, np.ndarray],
                steps: tuple[int, ...] = (-1, 1)):
    """Every architecture one choice step away (in the given directions), with the router's log-prob of it."""
    for axis in axes:
        for row in range(axis.rows):
            for step in steps:
                new = picks[axis.name][row] + step
                if 0 <= new < len(axis.choices):
                    moved = dict(picks, **{axis.name: picks[axis.name].copy()})
                    moved[axis.name][row] = new
                    yield log_probs[axis.name][row, new], moved


def _nearby_repair(cfg, rc, axes, picks, log_probs, ratio_of, tolerance,
                   max_evaluations: int = 20000) -> ElasticSpec | None:
    """When every single step overshoots the band: the in-tolerance architecture a few steps away (steps up and
    down on different axes) that the router rates highest, searching 2 steps deep, then 3 when the number of
    neighbours keeps that under `max_evaluations`; None if there is none."""
    branching = sum(1 for _ in _neighbours(axes, picks, log_probs))
    frontier = [(0.0, picks)]
    for depth in (1, 2, 3):
        if depth == 3 and branching ** 3 > max_evaluations:
            break
        frontier = [(lp + lp_step, moved) for lp, node in frontier
                    for lp_step, moved in _neighbours(axes, node, log_probs)]
        if depth == 1:
            continue
        best = None
        for lp, node in frontier:
            spec = spec_from_picks(cfg, rc, axes, node)
            if abs(ratio_of(spec) - 1.0) <= tolerance and (best is None or lp > best[0]):
                best = (lp, spec)
        if best is not None:
            return best[1]
    return None


class Router:
    """Static description of a router for one parent: axes, candidate masks; pure functions of router params."""

    def __init__(self, cfg: ModelConfig, rc: RouterConfig):
        self.cfg, self.rc = cfg, rc
        self.axes = build_axes(cfg, rc)
        self.mask_table = {axis.name: choice_masks(cfg, axis, rc.attention_mode) for axis in self.axes}
        self.codes = np.stack([budget_code(rc, b) for b in rc.budgets])

    def init(self, key: jax.Array) -> dict:
        return init_router(key, self.cfg, self.rc)

    def sample(self, params: dict, budget_index: int, key: jax.Array | None, progress: jax.Array):
        """(masks, resource loss, ratio, probs) of trained budget `budget_index` at training `progress`."""
        tau, scale = schedule(self.rc, progress)
        logits = router_logits(params, jnp.asarray(self.codes[budget_index]), self.axes)
        keys = [None] * len(self.axes) if key is None else list(jax.random.split(key, len(self.axes)))
        probs = {axis.name: sample_probs(logits[axis.name], k, tau, scale, self.rc.hard)
                 for axis, k in zip(self.axes, keys)}
        loss, ratio = resource_loss(self.cfg, self.rc, self.axes, probs, self.rc.budgets[budget_index])
        return masks_from_probs(self.cfg, self.axes, probs, self.mask_table), loss, ratio, probs

    def spec_for(self, params: dict, budget: float) -> ElasticSpec:
        """The argmax architecture for a trained or in-between budget."""
        logits = router_logits(params, jnp.asarray(budget_code(self.rc, budget)), self.axes)
        return argmax_spec(self.cfg, self.rc, self.axes, logits, budget)

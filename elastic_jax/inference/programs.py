"""The engine's compiled programs, one set per architecture: feeding tokens into caches (prefill) and the decode loop.

Exact batching without padding: every sequence keeps its own cache (batch 1 inside, the sequences stacked on a
leading axis) and its own position, and the model runs under `jax.vmap` over the sequences. A sequence's
attention sees only its own keys and its Mamba conv window and SSM state only ever take its own tokens, so a
batch of prompts of different lengths computes, for each prompt, what that prompt alone computes; no pad token
enters any state. Ragged prompts are fed in pieces of 1, 4, 16, ... tokens (a 37-token prompt as 16 + 16 + 4 + 1),
every sequence at its own position, rows without a piece of that size left untouched: the number of feed programs
per architecture is bounded by log4(context) instead of one per prompt length.

The parameters passed in are always the parent's: each program cuts its budget's static prefix slices
(`slice_params`) inside the jit, so no served budget keeps a copy of its weights between calls.

Each program is built for an explicit `CompileTarget` (kernels/target.py); `decode_target` is the one place that
chooses how a decode step reads its weights (the CPU decode kernels, decode views, or XLA's products).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.inference.sampling import sample_next
from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.cache import BY_POSITION
from elastic_jax.model.decode_views import DECODE_VIEWS, decode_views
from elastic_jax.model.functional import build
from elastic_jax.model.hybrid import compute_dtype
from elastic_jax.quant.params import dequantize_params

log = logging.getLogger(__name__)
VIEWS_MIN_TOKENS = 16  # without the CPU decode kernels, batch-1 calls of this many tokens copy each expert once


def decode_target(rows: int, new_tokens: int, tokens: int = 1) -> CompileTarget:
    """The target of a decode program over `rows` sequences making up to `new_tokens` tokens per call, each step
    feeding `tokens` tokens per sequence (a speculative verification pass of k drafted tokens: k+1, keeping every
    position's Mamba state), on this process's devices. One row on the CPU: the CPU decode kernels
    (kernels/cpu_gemv: products split over the cores, each weight read once for the step's tokens, routed experts
    read in place) when they are built, else decode views for one-token calls long enough to repay their copy
    (model/decode_views.py); otherwise XLA's products, several rows under vmap."""
    platform, states = jax.default_backend(), tokens > 1
    if rows == 1 and platform == "cpu" and cpu_gemv.available():
        return CompileTarget(platform, decode="kernels", kernels=cpu_gemv.KERNELS, step_states=states,
                             decode_rows=tokens)
    if rows == 1 and platform == "cpu" and new_tokens >= VIEWS_MIN_TOKENS and not states:
        return CompileTarget(platform, decode="views")
    return CompileTarget(platform, sequences=rows if rows > 1 else 0, step_states=states)


def feed_target(rows: int) -> CompileTarget:
    """The target of a feed program: the per-sequence step under vmap over `rows` sequences."""
    return CompileTarget(jax.default_backend(), sequences=rows)


class ProgramCache:
    """Jitted programs by key (architecture + static shapes), each compiled once while kept, and counted. With a
    `limit`, at most that many are kept (the least recently used dropped first): a server meets unbounded mixes."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.compilations = 0
        self._programs: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, key: Hashable, make: Callable[[], Callable]) -> Callable:
        if key in self._programs:
            self._programs.move_to_end(key)
            return self._programs[key]
        self._programs[key] = make()
        self.compilations += 1
        log.info("compiling %s (%d programs kept)", key[0], len(self._programs))
        while self.limit is not None and len(self._programs) > self.limit:
            self._programs.popitem(last=False)
        return self._programs[key]


PROGRAMS = ProgramCache()  # shared by every engine in the process: programs depend on configs and shapes only


def _rows(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """Per-row select: `new` where mask[row], else `old`."""
    return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def _hold(done: jax.Array, new: dict, old: dict) -> dict:
    """Caches of finished rows stay as they were. K/V buffers need no select: a finished row's position does not
    advance, so what it writes at that slot is overwritten before any query can see it."""
    def pick(path, n, o):
        last = path[-1]
        if isinstance(last, jax.tree_util.DictKey) and last.key in BY_POSITION:
            return n
        return _rows(~done, n, o)
    return jax.tree_util.tree_map_with_path(pick, new, old)


def _cut(cfg: ModelConfig, spec: ElasticSpec) -> Callable:
    """parent params -> the budget's sliced params; a quantised parent (NVFP4 / FP8 leaves) is dequantised here,
    inside the jit, before the budget is cut."""
    return lambda parent: slice_params(dequantize_params(parent, jnp.float32), cfg, spec)[0]


def _sequence_step(cfg: ModelConfig, spec: ElasticSpec, target: CompileTarget):
    """(parent params) -> f(sliced params, tokens [B, L], caches of B sequences) -> (last logits [B, V], caches),
    the model run under vmap over the sequences (`target.sequences` of them)."""
    model = build(spec.apply_to(cfg), target=target)

    def one(params, tokens, cache):
        logits, cache = model.apply({"params": params}, tokens[None], cache)
        return logits[0, -1], cache

    return _cut(cfg, spec), jax.vmap(one, in_axes=(None, 0, 0))


def _single_step(cfg: ModelConfig, spec: ElasticSpec, target: CompileTarget):
    """Batch 1 without vmap: (parent) -> variables, and f(variables, token [], cache of the one row) -> (logits [V],
    cache). A "views" target's variables carry decode views (model/decode_views.py): one copy of every expert and
    of each Mamba input projection per call, after which each step reads its routed experts' weights in place
    (lax.switch) instead of copying them out of the stacked weights, and makes one Mamba input product, not five."""
    sub_cfg = spec.apply_to(cfg)
    model, cut = build(sub_cfg, target=target), _cut(cfg, spec)

    def variables(parent):
        params = cut(parent)
        if not target.views:
            return {"params": params}
        return {"params": params, DECODE_VIEWS: decode_views(params, compute_dtype(sub_cfg))}

    def step(variables, token, cache):
        logits, cache = model.apply(variables, token.reshape(1, 1), cache)
        return logits[0, -1], cache

    return variables, step


def make_feed(cfg: ModelConfig, spec: ElasticSpec, rows: int) -> Callable:
    """jit(parent, tokens [rows, piece], caches, logits [rows, V], active [rows]) -> (logits, caches) for active
    rows."""
    cut, step = _sequence_step(cfg, spec, feed_target(rows))

    def run(parent, tokens, caches, logits, active):
        new_logits, new_caches = step(cut(parent), tokens, caches)
        return _rows(active, new_logits, logits), jax.tree.map(lambda n, o: _rows(active, n, o), new_caches, caches)

    return jax.jit(run, donate_argnums=(2,))


def make_decode(cfg: ModelConfig, spec: ElasticSpec, width: int, temperature: float, top_k: int, top_p: float,
                stop_ids: tuple[int, ...], pad_id: int, target: CompileTarget) -> Callable:
    """jit(parent, caches, logits, keys [B], emitted [B], done [B], max_new) -> (tokens [B, width], counts [B],
    logits, caches, done): up to `max_new` (<= width, traced: one program serves every count) tokens per row in one
    `lax.while_loop`, a row stopping at any of `stop_ids`; built for `target` (`decode_target`).

    Every emitted token (a stop token included) is fed, so the caches end holding each row's whole text and
    `logits` are those after its last token: a later call continues where this one ended. Row r's sample at its
    n-th emitted token uses fold_in(keys[r], n), so decoding in several calls samples what one call would.

    A target without `sequences` decodes one row without vmap (`_single_step`): the loop runs only while its row
    is not done, so nothing needs holding. Otherwise the per-sequence step runs under vmap and finished rows hold
    their caches; MoE layers choose their strategy for all the rows together (model/moe.py `choose_strategy`).
    """
    stops = jnp.asarray(stop_ids, jnp.int32)

    def sample(logits, key):
        return sample_next(logits[None], key, temperature, top_k, top_p)[0]

    def loop(max_new, done, carry0, body):
        def cond(carry):
            return (carry[0] < max_new) & ~jnp.all(carry[3])
        return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), *carry0[:2], done, *carry0[2:]))

    run = (_decode_one if target.sequences == 0 else _decode_rows)(cfg, spec, target, sample, loop, stops, width,
                                                                  pad_id)
    return jax.jit(run, donate_argnums=(1,))


def _decode_one(cfg, spec, target, sample, loop, stops, width, pad_id) -> Callable:
    """make_decode's program for one row, without vmap."""
    variables_of, single = _single_step(cfg, spec, target)

    def run(parent, caches, logits, keys, emitted, done, max_new):
        variables = variables_of(parent)

        def body(carry):
            t, logits, cache, done, out, count = carry
            tok = sample(logits, jax.random.fold_in(keys[0], emitted[0] + count[0]))
            logits, cache = single(variables, tok, cache)
            done = done | jnp.isin(tok, stops)
            return t + 1, logits, cache, done, out.at[0, t].set(tok), count + 1

        out = jnp.full((1, width), pad_id, jnp.int32)
        init = (logits[0], jax.tree.map(lambda x: x[0], caches), out, jnp.zeros((1,), jnp.int32))
        _, logits, cache, done, out, count = loop(max_new, done, init, body)
        return out, count, logits[None], jax.tree.map(lambda x: x[None], cache), done

    return run


def _decode_rows(cfg, spec, target, sample, loop, stops, width, pad_id) -> Callable:
    """make_decode's program for several rows, the per-sequence step under vmap."""
    cut, step = _sequence_step(cfg, spec, target)

    def run(parent, caches, logits, keys, emitted, done, max_new):
        params = cut(parent)
        rows = logits.shape[0]

        def body(carry):
            t, logits, caches, done, out, count = carry
            keys_now = jax.vmap(jax.random.fold_in)(keys, emitted + count)
            tok = jnp.where(done, pad_id, jax.vmap(sample)(logits, keys_now))
            out = out.at[:, t].set(tok)
            new_logits, new_caches = step(params, tok[:, None], caches)
            caches = _hold(done, new_caches, caches)
            logits = _rows(done, logits, new_logits)
            count = count + (~done).astype(jnp.int32)
            done = done | jnp.isin(tok, stops)
            return t + 1, logits, caches, done, out, count

        out = jnp.full((rows, width), pad_id, jnp.int32)
        _, logits, caches, done, out, count = loop(max_new, done, (logits, caches, out, jnp.zeros((rows,), jnp.int32)),
                                                   body)
        return out, count, logits, caches, done

    return run

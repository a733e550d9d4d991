"""Serve any budget of one elastic checkpoint: load the parent, the router and the metadata once; generate with any
budget, trained or in between, for batches of prompts of different lengths.

    engine = Engine.load("run/checkpoints")
    outs = engine.generate([[1, 40, 41], [1, 42]], budget=0.55, max_new_tokens=32)   # new tokens per prompt

A budget resolves to an architecture (the trained spec recorded in the checkpoint, or the router's argmax choice
between two trained budgets); programs are compiled per architecture and static shapes and cached
(`engine.compilations`, logged). Exactness of batching and the zero-copy slicing are explained in programs.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.accounting import WEIGHT_DTYPES, count_params, weight_bytes
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.router.resource import tolerance_for
from elastic_jax.elastic.spec import Budget, ElasticError, ElasticSpec
from elastic_jax.inference.programs import PROGRAMS, make_decode, make_feed
from elastic_jax.kernels import cpu_gemv
from elastic_jax.model.cache import cache_bytes, init_cache
from elastic_jax.model.functional import InputError

CAPACITY_MULTIPLE = 64  # cache lengths are rounded up to this, so requests of similar length share programs
VIEWS_MIN_TOKENS = 16  # without the CPU decode kernels, batch-1 calls of this many tokens copy each expert once
FEED_BASE = 4  # prompts are fed in pieces of 1, 4, 16, ... tokens: few programs per architecture, few calls each


@dataclasses.dataclass(frozen=True)
class Arch:
    """One served budget: its architecture and where it sits against the target."""

    budget: float
    spec: ElasticSpec
    cfg: ModelConfig  # the nested model's config
    trained: bool  # the budget is one the checkpoint was trained for (its spec is recorded there)
    achieved: float  # the nested model's size as a fraction of the parent, under the router's metric


@dataclasses.dataclass
class Batch:
    """Decoding state of a batch of sequences under one architecture (see programs.py for the cache layout)."""

    arch: Arch
    caches: Any
    logits: jax.Array  # [B, vocab]: after each row's last token
    tokens: list[list[int]]  # each row's whole text so far
    capacity: int
    keys: jax.Array  # [B] per-row sampling keys
    emitted: np.ndarray  # [B] tokens generated so far per row (the sampling step index)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def check_elastic_checkpoint(path: str | Path) -> dict[str, Any]:
    """The metadata of an elastic checkpoint, or one clear error saying what the path is instead."""
    from elastic_jax.model_io import read_metadata

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint: {path} is not a directory (expected an elastic checkpoint directory, "
                                f"e.g. <workdir>/checkpoints written by `elastic-jax elastify`)")
    try:
        meta = read_metadata(path)
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        raise FileNotFoundError(f"checkpoint: {path} is not an elastic_jax checkpoint ({err})") from None
    elastic = meta.get("elastic") or {}
    if "model" not in meta or "router" not in elastic or "specs" not in elastic:
        raise ElasticError(f"checkpoint: {path} is not an elastic checkpoint (its metadata has no router; it is a "
                           f"plain model). Make one with `elastic-jax elastify`, or serve this model without --budget")
    return meta


class Engine:
    """One elastic checkpoint in memory (the parent's weights once, the router, the metadata), serving any budget."""

    def __init__(self, cfg: ModelConfig, params: dict, meta: dict[str, Any]):
        from elastic_jax.data import load_tokenizer
        from elastic_jax.data.tokenizer import tokenizer_from_dict

        if "router" not in params or "model" not in params:
            raise ElasticError(f"engine: parameters must hold 'model' and 'router' (an elastic checkpoint), got "
                               f"{sorted(params)}")
        self.cfg, self.meta = cfg, meta
        self.params = jax.device_put(params["model"])  # resident once; every budget slices it inside its programs
        self.router_params = params["router"]
        elastic = meta["elastic"]
        self.router_config = RouterConfig(**{"width_multiple": 1, **elastic["router"]})
        self.router = Router(cfg, self.router_config)
        self.trained = {float(k): ElasticSpec.from_dict(v) for k, v in elastic["specs"].items()}
        self.tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else load_tokenizer(None)
        self.programs = PROGRAMS
        self._archs: dict[float, Arch] = {}

    @classmethod
    def load(cls, path: str | Path) -> Engine:
        """Read an elastic checkpoint (the newest step); a path that is not one fails before anything is read."""
        from elastic_jax.checkpoint import load_params
        from elastic_jax.experiment import model_config_from

        meta = check_elastic_checkpoint(path)
        cfg = model_config_from(meta["model"])
        return cls(cfg, load_params(path), meta)

    # ---- budgets ---------------------------------------------------------------------------------------
    @property
    def compilations(self) -> int:
        """Programs compiled so far in this process (each key of the shared program cache compiles once)."""
        return self.programs.compilations

    @property
    def budgets(self) -> tuple[float, ...]:
        """The trained budgets, largest first."""
        return tuple(sorted(self.trained, reverse=True))

    def arch(self, budget: float) -> Arch:
        """The architecture served for `budget` (cached); ElasticError for a budget the router cannot reach."""
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
            raise ElasticError(f"budget must be a number in (0, 1] (a fraction of the parent), got {budget!r}")
        budget = float(budget)
        if budget in self._archs:
            return self._archs[budget]
        low, high = min(self.trained), max(self.trained)
        trained = next((b for b in self.trained if abs(b - budget) < 1e-9), None)
        if trained is None and not low <= budget <= high:
            raise ElasticError(f"budget {budget} is outside what the router can reach: it was trained for "
                               f"{sorted(self.trained)} and serves budgets in [{low}, {high}]")
        spec = self.trained[trained] if trained is not None else self.router.spec_for(self.router_params, budget)
        sub_cfg = spec.apply_to(self.cfg)
        metric = Budget(1.0, self.router_config.metric)
        achieved = metric.measure(sub_cfg) / metric.measure(self.cfg)
        if trained is None and abs(achieved / budget - 1.0) > tolerance_for(self.router_config, budget) + 1e-9:
            raise ElasticError(f"budget {budget}: the router's nearest architecture has {achieved:.3f} of the parent's "
                               f"{self.router_config.metric}, outside the tolerance; the router cannot reach it")
        arch = Arch(budget, spec, sub_cfg, trained is not None, achieved)
        self._archs[budget] = arch
        return arch

    # ---- requests -----------------------------------------------------------------------------------------
    def check_request(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
        """Validate prompts and the token count before anything compiles; returns the cache capacity to use."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("prompts: need at least one prompt, each of at least one token")
        vocab, limit = self.cfg.vocab_size, self.cfg.max_position_embeddings
        for row, prompt in enumerate(prompts):
            bad = [int(t) for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise InputError(f"prompts[{row}]: token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > limit:
            raise InputError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                             f"{longest + max_new_tokens} exceeds the context limit "
                             f"model.max_position_embeddings={limit}")
        return min(limit, -(-(longest + max_new_tokens) // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE)

    def start(self, budget: float, prompts: Sequence[Sequence[int]], capacity: int, seed: int = 0) -> Batch:
        """Fresh caches of `capacity` tokens for the prompts' rows, filled with the prompts (the prefill)."""
        arch = self.arch(budget)
        if capacity > self.cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds model.max_position_embeddings="
                             f"{self.cfg.max_position_embeddings}")
        rows = len(prompts)
        one = init_cache(arch.cfg, 1, capacity)
        caches = jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, *x.shape)), one)
        logits = jnp.zeros((rows, arch.cfg.vocab_size), jnp.float32)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(rows))
        batch = Batch(arch, caches, logits, [[] for _ in prompts], capacity, keys, np.zeros(rows, np.int32))
        self.feed(batch, prompts)
        return batch

    def feed(self, batch: Batch, rows: Sequence[Sequence[int]]) -> None:
        """Append each row's tokens (any lengths, empty allowed) to its cache, in pieces of powers of FEED_BASE."""
        if len(rows) != len(batch.tokens):
            raise InputError(f"feed: got {len(rows)} rows of tokens for a batch of {len(batch.tokens)}")
        lengths = np.array([len(r) for r in rows])
        if (lengths + batch.lengths).max() > batch.capacity:
            raise InputError(f"feed: a row would hold {(lengths + batch.lengths).max()} tokens, more than the cache "
                             f"capacity {batch.capacity}")
        done = np.zeros(len(rows), np.int64)
        for piece, active in _pieces(lengths):
            tokens = np.zeros((len(rows), piece), np.int32)
            for r in np.flatnonzero(active):
                tokens[r] = rows[r][done[r]:done[r] + piece]
            done += np.where(active, piece, 0)
            fn = self.programs.get(("feed", self.cfg, batch.arch.spec, len(rows), piece, batch.capacity),
                                   lambda: make_feed(self.cfg, batch.arch.spec))
            batch.logits, batch.caches = fn(self.params, jnp.asarray(tokens), batch.caches, batch.logits,
                                            jnp.asarray(active))
        for r, row in enumerate(rows):
            batch.tokens[r].extend(int(t) for t in row)

    def decode(self, batch: Batch, max_new_tokens: int, *, stop_ids: Sequence[int] = (), temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, done: Sequence[bool] | None = None) -> list[list[int]]:
        """Up to `max_new_tokens` new tokens per row (a row ends after emitting any of `stop_ids`; rows marked
        `done` emit nothing). Returns each row's new tokens; the batch continues from there."""
        _check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        room = batch.capacity - max(batch.lengths)
        if max_new_tokens > room:
            raise InputError(f"max_new_tokens {max_new_tokens} exceeds the room left in the cache ({room} tokens)")
        stops = tuple(int(s) for s in stop_ids)
        rows = len(batch.tokens)
        # the CPU decode kernels need no views: one batch-1 program serves every call length
        views = rows == 1 and max_new_tokens >= VIEWS_MIN_TOKENS and not cpu_gemv.available()
        key = ("decode", self.cfg, batch.arch.spec, rows, batch.capacity, float(temperature), int(top_k),
               float(top_p), stops, views)
        fn = self.programs.get(key, lambda: make_decode(self.cfg, batch.arch.spec, batch.capacity, float(temperature),
                                                        int(top_k), float(top_p), stops, self.cfg.pad_token_id,
                                                        rows, views))
        done0 = jnp.zeros(len(batch.tokens), bool) if done is None else jnp.asarray(np.asarray(done, bool))
        out, count, batch.logits, batch.caches, _ = fn(self.params, batch.caches, batch.logits, batch.keys,
                                                       jnp.asarray(batch.emitted), done0,
                                                       jnp.asarray(max_new_tokens, jnp.int32))
        out, count = np.asarray(out), np.asarray(count)
        new = [out[r, :count[r]].tolist() for r in range(len(batch.tokens))]
        for r, toks in enumerate(new):
            batch.tokens[r].extend(toks)
        batch.emitted = batch.emitted + count
        return new

    def generate(self, prompts: Sequence[Sequence[int]], budget: float, max_new_tokens: int = 32, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 eos_id: int | None = None) -> list[list[int]]:
        """New tokens per prompt (each ending at its first eos, which is included), greedy at temperature 0."""
        self.arch(budget)
        _check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
        capacity = self.check_request(prompts, max_new_tokens)
        batch = self.start(budget, prompts, capacity, seed)
        eos = self.cfg.eos_token_id if eos_id is None else eos_id
        return self.decode(batch, max_new_tokens, stop_ids=(eos,), temperature=temperature, top_k=top_k, top_p=top_p)

    def stream(self, prompt: Sequence[int], budget: float, max_new_tokens: int = 64, *, chunk: int = 4,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[int]:
        """One prompt's new tokens as they are made (decoded `chunk` tokens per compiled call)."""
        self.arch(budget)
        _check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
        capacity = self.check_request([prompt], max_new_tokens)
        batch = self.start(budget, [prompt], capacity, seed)
        made = 0
        while made < max_new_tokens:
            step = min(chunk, max_new_tokens - made)
            new = self.decode(batch, step, stop_ids=(self.cfg.eos_token_id,), temperature=temperature, top_k=top_k,
                              top_p=top_p)[0]
            yield from new
            made += len(new)
            if len(new) < step or (new and new[-1] == self.cfg.eos_token_id):
                return

    # ---- memory -------------------------------------------------------------------------------------------
    def memory_report(self, budgets: Sequence[float] | None = None, context: int | None = None) -> dict[str, Any]:
        """Resident weight bytes (the parent once; what each served budget adds) and per-sequence cache bytes,
        measured on the arrays and checked against elastic_jax/elastic/accounting.py."""
        budgets = sorted(self._archs) if budgets is None else budgets
        context = self.cfg.max_position_embeddings if context is None else context
        leaves = jax.tree.leaves(self.params)
        resident = sum(int(x.nbytes) for x in leaves)
        dtype = str(leaves[0].dtype)
        expected = weight_bytes(self.cfg, dtype) if dtype in WEIGHT_DTYPES else None
        rows = []
        for b in budgets:
            arch = self.arch(b)
            kv, state = _cache_split(arch.cfg, context)
            total, active = count_params(arch.cfg)
            slice_bytes = weight_bytes(arch.cfg, dtype) if dtype in WEIGHT_DTYPES else None
            rows.append({"budget": b, "trained": arch.trained, "achieved": arch.achieved, "total_params": total,
                         "active_params": active, "slice_weight_bytes": slice_bytes,
                         "resident_bytes_added": 0,  # slices are cut inside each program: no copy between calls
                         "transient_bytes_per_call": 0 if arch.spec.is_full(self.cfg) else slice_bytes,
                         "kv_bytes_per_sequence": kv, "kv_bytes_per_token": kv // context,
                         "ssm_state_bytes_per_sequence": state,
                         "cache_matches_accounting": kv + state == cache_bytes(arch.cfg, 1, context)})
        return {"context": context, "weight_dtype": dtype, "parent_weight_bytes": resident,
                "parent_matches_accounting": expected == resident,
                "router_bytes": sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(self.router_params)),
                "resident_weight_bytes": resident + sum(r["resident_bytes_added"] for r in rows),
                "budgets": rows}


def _pieces(lengths: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(piece size, rows taking a piece of that size) in feeding order: each length written in base FEED_BASE,
    largest digit first, one call per unit of a digit (so at most FEED_BASE - 1 calls per piece size)."""
    piece = 1
    while piece * FEED_BASE <= max(int(lengths.max()), 1):
        piece *= FEED_BASE
    while piece >= 1:
        digits = (lengths // piece) % FEED_BASE
        for unit in range(FEED_BASE - 1):
            active = digits > unit
            if active.any():
                yield piece, active
        piece //= FEED_BASE


def _cache_split(cfg: ModelConfig, context: int) -> tuple[int, int]:
    """(attention K/V bytes, Mamba conv + SSM state bytes) of one sequence's allocated cache of `context` tokens."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, 1, context))
    kv = state = 0
    for layer in shapes["layers"]:
        for name, leaf in (layer or {}).items():
            nbytes = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
            if name in ("k", "v"):
                kv += nbytes
            else:
                state += nbytes
    return kv, state


def _check_sampling(temperature: float, top_k: int, top_p: float, vocab: int) -> None:
    if not isinstance(temperature, (int, float)) or temperature < 0 or not math.isfinite(temperature):
        raise InputError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise InputError(f"top_k must be an integer in [0, vocab_size={vocab}], got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")

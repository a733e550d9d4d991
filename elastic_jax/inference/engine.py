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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elastic_jax.checkpoint import load_params
from elastic_jax.config import ModelConfig
from elastic_jax.data import load_tokenizer
from elastic_jax.data.tokenizer import tokenizer_from_dict
from elastic_jax.elastic.accounting import WEIGHT_DTYPES, count_params, weight_bytes
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.router.resource import tolerance_for
from elastic_jax.elastic.spec import Budget, ElasticError, ElasticSpec
from elastic_jax.experiment import model_config_from
from elastic_jax.inference import decoder
from elastic_jax.inference.decoder import CAPACITY_MULTIPLE, Batch, capacity_for  # noqa: F401 (API)
from elastic_jax.inference.programs import PROGRAMS
from elastic_jax.inference.sampling import check_sampling
from elastic_jax.model.cache import bytes_by_kind, cache_bytes, init_cache
from elastic_jax.model.functional import InputError
from elastic_jax.model_io import read_metadata


@dataclasses.dataclass(frozen=True)
class Arch:
    """One served budget: its architecture and where it sits against the target."""

    budget: float
    spec: ElasticSpec
    cfg: ModelConfig  # the nested model's config
    trained: bool  # the budget is one the checkpoint was trained for (its spec is recorded there)
    achieved: float  # the nested model's size as a fraction of the parent, under the router's metric


def check_elastic_checkpoint(path: str | Path) -> dict[str, Any]:
    """The metadata of an elastic checkpoint, or one clear error saying what the path is instead."""
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
        return capacity_for(longest + max_new_tokens, limit)

    def start(self, budget: float, prompts: Sequence[Sequence[int]], capacity: int, seed: int = 0) -> Batch:
        """Fresh caches of `capacity` tokens for the prompts' rows, filled with the prompts (the prefill)."""
        arch = self.arch(budget)
        if capacity > self.cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds model.max_position_embeddings="
                             f"{self.cfg.max_position_embeddings}")
        return decoder.start(self.cfg, arch.spec, self.params, prompts, capacity, seed)

    def feed(self, batch: Batch, rows: Sequence[Sequence[int]]) -> None:
        """Append each row's tokens (any lengths, empty allowed) to its cache (decoder.feed)."""
        decoder.feed(batch, self.params, rows)

    def decode(self, batch: Batch, max_new_tokens: int, *, stop_ids: Sequence[int] = (), temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, done: Sequence[bool] | None = None) -> list[list[int]]:
        """Up to `max_new_tokens` new tokens per row (a row ends after emitting any of `stop_ids`; rows marked
        `done` emit nothing). Returns each row's new tokens; the batch continues from there."""
        check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        return decoder.decode(batch, self.params, max_new_tokens, stop_ids=stop_ids, temperature=temperature,
                              top_k=top_k, top_p=top_p, done=done)

    def generate(self, prompts: Sequence[Sequence[int]], budget: float, max_new_tokens: int = 32, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 eos_id: int | None = None) -> list[list[int]]:
        """New tokens per prompt (each ending at its first eos, which is included), greedy at temperature 0."""
        self.arch(budget)
        check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
        capacity = self.check_request(prompts, max_new_tokens)
        batch = self.start(budget, prompts, capacity, seed)
        eos = self.cfg.eos_token_id if eos_id is None else eos_id
        return self.decode(batch, max_new_tokens, stop_ids=(eos,), temperature=temperature, top_k=top_k, top_p=top_p)

    def stream(self, prompt: Sequence[int], budget: float, max_new_tokens: int = 64, *, chunk: int = 4,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[int]:
        """One prompt's new tokens as they are made (decoded `chunk` tokens per compiled call)."""
        self.arch(budget)
        check_sampling(temperature, top_k, top_p, self.cfg.vocab_size)
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
        """Resident bytes (the parent once and the router: the only arrays the engine holds, every budget being cut
        inside its programs), per budget its transient bytes per call, and per-sequence cache bytes, measured on
        the arrays and checked against elastic_jax/elastic/accounting.py."""
        budgets = sorted(self._archs) if budgets is None else budgets
        context = self.cfg.max_position_embeddings if context is None else context
        leaves = jax.tree.leaves(self.params)
        resident = sum(int(x.nbytes) for x in leaves)  # the arrays the engine holds: the parent and the router
        router = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(self.router_params))
        dtype = str(leaves[0].dtype)
        expected = weight_bytes(self.cfg, dtype) if dtype in WEIGHT_DTYPES else None
        rows = []
        for b in budgets:
            arch = self.arch(b)
            kv, state = bytes_by_kind(jax.eval_shape(lambda cfg=arch.cfg: init_cache(cfg, 1, context)))
            total, active = count_params(arch.cfg)
            slice_bytes = weight_bytes(arch.cfg, dtype) if dtype in WEIGHT_DTYPES else None
            rows.append({"budget": b, "trained": arch.trained, "achieved": arch.achieved, "total_params": total,
                         "active_params": active, "slice_weight_bytes": slice_bytes,
                         "transient_bytes_per_call": 0 if arch.spec.is_full(self.cfg) else slice_bytes,
                         "kv_bytes_per_sequence": kv, "kv_bytes_per_token": kv // context,
                         "ssm_state_bytes_per_sequence": state,
                         "cache_matches_accounting": kv + state == cache_bytes(arch.cfg, 1, context)})
        return {"context": context, "weight_dtype": dtype, "parent_weight_bytes": resident,
                "parent_matches_accounting": expected == resident,
                "router_bytes": router, "resident_bytes": resident + router,
                "budgets": rows}

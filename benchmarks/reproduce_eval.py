"""Evaluation of one model of the "Is nesting worth it?" experiment: eval loss and reasoning accuracy.

Every row is scored the same way, whatever trained it: a parent's weights (`params`, config `cfg`) and the
architecture kept of it (`spec`, the whole parent for a model trained alone). The loss is the token-weighted
cross-entropy of the sliced model on the held-out batches of the experiment's data (`make_eval_batches`, the same
batches for every row); the accuracy is greedy decoding of the first held-out reasoning problems through the
inference engine, scored by the task's `score_answer` (what `elastic-jax eval` measures). The engine feeds
prompts of any length in pieces of 1 / 4 / 16 tokens, so each architecture compiles a handful of programs instead
of one generation program per prompt length (on the "medium" task that is 4 programs instead of 14).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.data import encode_prompt, eval_prompts, make_eval_batches, score_answer
from elastic_jax.elastic.accounting import count_params
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError, ElasticSpec
from elastic_jax.inference.engine import Engine
from elastic_jax.train.evaluation import eval_loss
from elastic_jax.train.loop import RunSpec
from elastic_jax.train.step import make_eval_step

EVAL_SEQ_LEN = 128  # one held-out batch shape for every row (pretraining's and elastic stage 1's length)


def serving_engine(cfg: ModelConfig, params: dict, spec: ElasticSpec, tokenizer: Any) -> Engine:
    """An engine serving `spec` of `params` as its one budget (1.0), for a plain model as for an elastic slice."""
    rc = RouterConfig(budgets=(1.0,), width_multiple=1)
    meta = {"elastic": {"router": rc.to_dict(), "specs": {"1": spec.to_dict()}}, "tokenizer": tokenizer.to_dict()}
    router_params = Router(cfg, rc).init(jax.random.PRNGKey(0))  # unused: the budget's spec is given
    return Engine(cfg, {"model": params, "router": router_params}, meta)


def accuracy(engine: Engine, examples: list, tokenizer: Any, max_new_tokens: int) -> float:
    """Share of `examples` answered correctly by greedy decoding (one batch: one set of programs)."""
    prompts = [encode_prompt(e, tokenizer) for e in examples]
    outs = engine.generate(prompts, 1.0, max_new_tokens, eos_id=tokenizer.eos_id)
    return sum(bool(score_answer(out, e, tokenizer)) for out, e in zip(outs, examples, strict=True)) / len(examples)


class Evaluator:
    """The fixed held-out batches and problems of one experiment, scoring (cfg, params, spec) triples."""

    def __init__(self, spec: RunSpec, problems: int, batches: int):
        self.spec = spec
        self.batches = [{k: jnp.asarray(v) for k, v in b.items()}
                        for b in make_eval_batches(spec.data, spec.tokenizer, EVAL_SEQ_LEN, spec.train.global_batch,
                                                   batches, 0, 1, max_seq_len=spec.model.max_position_embeddings)]
        self.examples = eval_prompts(problems, spec.data.reasoning)

    def __call__(self, cfg: ModelConfig, params: dict, spec: ElasticSpec | None = None) -> dict[str, Any]:
        spec = spec or ElasticSpec()
        sub_params, sub_cfg = slice_params(params, cfg, spec)
        total, active = count_params(sub_cfg)
        loss = eval_loss(make_eval_step(sub_cfg)[0], sub_params, self.batches)
        # served as a plain model of its own shape: a slice and a model trained alone at that shape run the same
        # programs, which the rows' shared compilation cache then compiles once
        try:
            engine = serving_engine(sub_cfg, sub_params, ElasticSpec(), self.spec.tokenizer)
        except ElasticError:  # per-layer widths (heterogeneous choices): a router needs one width per axis, so the
            engine = serving_engine(cfg, params, spec, self.spec.tokenizer)  # slice is served from the parent
        acc = accuracy(engine, self.examples, self.spec.tokenizer, self.spec.train.eval_max_new_tokens)
        return {"loss": loss, "accuracy": acc, "total_params": total, "active_params": active,
                "spec": spec.to_dict(), "problems": len(self.examples)}

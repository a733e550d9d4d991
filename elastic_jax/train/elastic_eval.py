"""Per-budget evaluation after elastification: the zero-shot slice of the parent against the trained slice."""

from __future__ import annotations

import sys
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from elastic_jax.data import eval_prompts, make_eval_batches
from elastic_jax.elastic.accounting import count_params
from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import Budget, ElasticSpec
from elastic_jax.model.functional import apply
from elastic_jax.train.evaluation import reasoning_accuracy
from elastic_jax.train.loop import replicated
from elastic_jax.train.step import make_eval_step


def _loss(sub_cfg, sub_params, batches, eval_fns: dict) -> float:
    if sub_cfg not in eval_fns:  # one compiled eval step per architecture, shared by zero-shot and trained
        eval_fns[sub_cfg] = make_eval_step(sub_cfg)[0]
    eval_fn = eval_fns[sub_cfg]
    losses = [eval_fn(sub_params, b) for b in batches]
    total = sum(float(m["loss"]) * float(m["tokens"]) for m in losses)
    return total / max(sum(float(m["tokens"]) for m in losses), 1.0)


def _tokens_per_second(sub_cfg, sub_params, batch) -> float:
    apply(sub_cfg, sub_params, batch).block_until_ready()
    start = time.perf_counter()
    for _ in range(3):
        apply(sub_cfg, sub_params, batch).block_until_ready()
    return 3 * batch.size / (time.perf_counter() - start)


def evaluate_budgets(spec, ec, router, params: dict, teacher: dict, specs: dict[float, ElasticSpec],
                     prompts: int | None = None) -> list[dict[str, Any]]:
    """One row per budget: architecture, params, eval loss zero-shot (parent slice) and trained, accuracy, tok/s."""
    cfg = spec.model
    batches = [{k: jnp.asarray(v) for k, v in b.items()}
               for b in make_eval_batches(spec.data, spec.tokenizer, ec.stage1_seq_len, spec.train.global_batch,
                                          max(spec.train.eval_batches, 1), 0, 1,
                                          max_seq_len=cfg.max_position_embeddings)]
    n_prompts = spec.train.eval_prompts if prompts is None else prompts
    examples = eval_prompts(n_prompts, spec.data.reasoning) if n_prompts and spec.data.reasoning_weight > 0 else []
    parent_total, parent_active = count_params(cfg)
    eval_fns: dict = {}
    rows = []
    for budget in ec.budgets:
        print(f"evaluating budget {budget:g} (zero-shot and trained) ...", file=sys.stderr, flush=True)
        arch = specs.get(budget) or router.spec_for(params["router"], budget)
        sub_params, sub_cfg = slice_params(params["model"], cfg, arch)
        zero_params, _ = slice_params(teacher, cfg, arch)
        total, active = count_params(sub_cfg)
        metric = Budget(budget, ec.metric)
        row = {"budget": budget, "spec": arch.to_dict(), "total_params": total, "active_params": active,
               "ratio_to_target": metric.measure(sub_cfg) / metric.target(cfg),
               "total_fraction": total / parent_total, "active_fraction": active / parent_active,
               "zero_shot_loss": _loss(sub_cfg, zero_params, batches, eval_fns),
               "loss": _loss(sub_cfg, sub_params, batches, eval_fns),
               "tokens_per_s": _tokens_per_second(sub_cfg, sub_params, np.asarray(batches[0]["inputs"]))}
        if examples:
            row["accuracy"] = reasoning_accuracy(sub_cfg, replicated(sub_params), examples, spec.tokenizer,
                                                 spec.train.eval_max_new_tokens)
            row["zero_shot_accuracy"] = reasoning_accuracy(sub_cfg, replicated(zero_params), examples,
                                                           spec.tokenizer, spec.train.eval_max_new_tokens)
        rows.append(row)
    parent_loss = _loss(cfg, teacher, batches, eval_fns)
    for row in rows:
        row["parent_loss"] = parent_loss
    return rows

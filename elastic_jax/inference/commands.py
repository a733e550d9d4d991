"""What the inference verbs of `elastic-jax` do (generate / eval / budget-control / report); cli.py only declares
their arguments and dispatches here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax

from elastic_jax.elastic.slicing import slice_params
from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference.budget_control import run_budget_control
from elastic_jax.inference.engine import Engine
from elastic_jax.inference.evaluate import evaluate_settings, held_out_problems, settings_grid
from elastic_jax.inference.load import is_quantized_checkpoint, load_engine
from elastic_jax.inference.report import build_report, headline_sentences, write_report
from elastic_jax.inference.speculative import speculative_generate
from elastic_jax.model.functional import InputError
from elastic_jax.model_io import read_metadata


def is_elastic_checkpoint(path: str | Path) -> bool:
    """True when `path` is a checkpoint whose metadata holds a router (False for anything else, errors included)."""
    try:
        elastic = read_metadata(path).get("elastic") or {}
    except Exception:  # not a checkpoint at all: the verb's own loading reports it
        return False
    return "router" in elastic and "specs" in elastic


def require_budget(path: str, budget: float | None, verb: str) -> None:
    """One line when an elastic checkpoint comes without --budget, or --budget with a plain model."""
    elastic = is_elastic_checkpoint(path)
    if elastic and budget is None:
        raise ElasticError(f"{verb}: {path} is an elastic checkpoint; pass --budget (a fraction in (0, 1], e.g. "
                           f"--budget 0.7) to choose the nested model")
    if not elastic and budget is not None:
        raise _not_elastic(path, verb)


def _not_elastic(path: str, verb: str) -> Exception:
    """What `path` is when --budget came with it and it holds no elastic model: missing, a Hugging Face directory
    (one model: --hf, no --budget), anything else that is no checkpoint, or a plain model."""
    from elastic_jax.checkpoint import find_checkpoint

    if (Path(path) / "config.json").is_file():
        use = (f"pass it as --hf {path} without --budget" if verb == "generate" else
               f"it is already exported; to elastify it, start from `elastic-jax importance --hf {path}`")
        return ElasticError(f"{verb} --checkpoint: {path} is a Hugging Face model directory, which holds one model "
                            f"({use}); --budget needs an elastic checkpoint (elastify's output)")
    find_checkpoint(path, item="metadata")  # raises what `path` is when it is no checkpoint (missing, a file, ...)
    return ElasticError(f"{verb}: --budget needs an elastic checkpoint; {path} is a plain model")


def load_budget(path: str, budget: float) -> tuple[Any, dict, Any]:
    """(config, parameters, tokenizer) of one budget of an elastic checkpoint, sliced from the parent."""
    engine = Engine.load(path)
    arch = engine.arch(budget)
    params, cfg = slice_params(jax.device_get(engine.params), engine.cfg, arch.spec)
    return cfg, params, engine.tokenizer


def _encode(engine, text: str, reasoning: bool = False) -> list[int]:
    ids = engine.tokenizer.encode(text, add_bos=True)
    if reasoning and (not ids or ids[-1] != engine.tokenizer.think_id):
        ids.append(engine.tokenizer.think_id)  # the task's prompts end with `=<think>`
    return ids


def generate_verb(args) -> int:
    """Stream one prompt's tokens from a budget of an elastic checkpoint."""
    if args.budget is None or not is_quantized_checkpoint(args.checkpoint):
        require_budget(args.checkpoint, args.budget, "generate")
    engine = load_engine(args.checkpoint, getattr(args, "quant", None))  # --quant: a quantised parent
    engine.arch(args.budget)
    prompt = _encode(engine, args.prompt)
    if args.draft_budget is not None:
        return _generate_speculative(engine, args, prompt)
    tokens: list[int] = []
    shown = ""
    for token in engine.stream(prompt, args.budget, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        tokens.append(token)
        # hold back a trailing replacement character: it may be the first byte of a multi-byte character
        text = engine.tokenizer.decode(tokens, skip_special=False).rstrip("\ufffd")
        if text.startswith(shown) and len(text) > len(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    text = engine.tokenizer.decode(tokens, skip_special=False)
    sys.stdout.write((text[len(shown):] if text.startswith(shown) else "") + "\n")
    return 0


def _generate_speculative(engine, args, prompt: list[int]) -> int:
    """One prompt at --budget, drafted by --draft-budget (--draft-tokens per round); the text, then on stderr how
    many drafts were accepted."""
    tokens, stats = speculative_generate(engine, [prompt], args.budget, args.draft_budget,
                                         args.draft_tokens, args.max_new_tokens,
                                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                         seed=args.seed)
    print(engine.tokenizer.decode(tokens[0], skip_special=False))
    print(f"speculative decoding: {stats.accepted[0]} of {stats.drafted} drafted tokens accepted "
          f"({stats.acceptance_rate:.2f}), {stats.tokens_per_round:.2f} tokens per pass of {args.budget:g}",
          file=sys.stderr)
    return 0


def _budgets(text: str) -> list[float]:
    try:
        return [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ElasticError(f"--budgets: expected comma-separated fractions like 1.0,0.7,0.4, got {text!r}") from None


def eval_verb(args) -> int:
    """Reasoning accuracy and latency of each budget (standard budget control at one thinking cap)."""
    engine = load_engine(args.checkpoint, getattr(args, "quant", None))
    budgets = _budgets(args.budgets) if args.budgets else list(engine.budgets)
    for b in budgets:
        engine.arch(b)
    problems = held_out_problems(engine, args.problems)
    rows = evaluate_settings(engine, settings_grid(budgets, [args.max_think], pairs=False), problems,
                             batch_size=args.batch_size, max_answer=args.max_answer,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{'budget':>7} {'achieved':>9} {'accuracy':>9} {'latency ms':>11} {'tokens':>7}  "
          f"({len(problems)} held-out problems, batch {rows[0]['batch_size']}, thinking cap {args.max_think})")
    for r in rows:
        arch = engine.arch(r["think_budget"])
        print(f"{r['think_budget']:>7g} {arch.achieved:>9.3f} {r['accuracy']:>9.3f} {r['latency_s'] * 1e3:>11.1f} "
              f"{r['tokens_per_request']:>7.1f}")
    return 0


def budget_control_verb(args) -> int:
    """Think with one budget, answer with another, for one prompt; prints both phases."""
    if isinstance(args.max_think, int) and args.max_think < 1:  # before loading anything
        raise InputError(f"--max-think (the thinking cap) must be >= 1 token, got {args.max_think}")
    engine = Engine.load(args.checkpoint)
    prompt = _encode(engine, args.prompt, reasoning=True)
    result = run_budget_control(engine, [prompt], args.think_budget, args.answer_budget, args.max_think,
                                args.max_answer, temperature=args.temperature, seed=args.seed)
    decode = engine.tokenizer.decode
    print(f"thinking ({args.think_budget:g}, {len(result.thoughts[0])} tokens"
          f"{', </think> forced' if result.forced[0] else ''}): {decode(result.thoughts[0], skip_special=False)}")
    print(f"answer ({args.answer_budget:g}): {decode(result.answers[0], skip_special=False)}")
    return 0


def report_verb(args) -> int:
    """Standard and elastic budget control over budgets, ordered pairs and caps: table, plot, headline."""
    from elastic_jax.inference.idle import LoadMonitor

    caps = [int(c) for c in args.caps.split(",")]
    if len(caps) < 1 or min(caps) < 1:
        raise InputError(f"--caps: thinking caps must be integers >= 1, got {args.caps!r}")
    monitor = LoadMonitor(args.max_load, args.allow_busy)  # a bad --max-load fails before loading anything
    engine = Engine.load(args.checkpoint)
    budgets = _budgets(args.budgets) if args.budgets else None
    for b in budgets or ():
        engine.arch(b)
    report = build_report(engine, budgets=budgets, caps=caps, problems=args.problems, batch_size=args.batch_size,
                          max_answer=args.max_answer, monitor=monitor,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    report["command"] = " ".join(["elastic-jax", *sys.argv[1:]])  # what the docs show as the command that made it
    paths = write_report(report, args.out)
    print("\n".join(headline_sentences(report["headline"])))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


VERB_FUNCTIONS = {"eval": eval_verb, "budget-control": budget_control_verb, "report": report_verb}


def run_inference_verb(args) -> int:
    return VERB_FUNCTIONS[args.verb](args)

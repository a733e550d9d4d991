"""`elastic-jax serve`: load an elastic checkpoint once, start the scheduler thread, and serve the HTTP API with
uvicorn until SIGTERM or Ctrl-C; then stop accepting, finish the requests in flight (bounded grace) and exit 0.
The heavy imports (JAX, FastAPI, uvicorn) happen when the verb runs, not when the command line is built."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("elastic_jax.serve")
API_KEY_ENV = "ELASTIC_JAX_API_KEY"


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="elastic checkpoint directory (elastify's <workdir>/checkpoints)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--served-model-name", help="the model name clients use (default: the run directory's name)")
    p.add_argument("--budgets", help="trained budgets to list, comma-separated (default: every trained budget); "
                                     "any <name>@x with x in the router's range is served regardless")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer <key>' on /v1 (or set {API_KEY_ENV})")
    p.add_argument("--slots", type=int, default=8, help="concurrent sequences per served architecture")
    p.add_argument("--max-model-len", type=int, help="tokens per sequence, prompt + output (default: the model's)")
    p.add_argument("--max-waiting", type=int, default=64, help="queued requests before new ones get 429")
    p.add_argument("--prefill-chunk", type=int, default=64,
                   help="prompt tokens fed per scheduler step (a power of 4), so long prompts do not stall decoding")
    p.add_argument("--decode-steps", type=int, default=4, help="tokens per sequence per decode call")
    p.add_argument("--slo-tpot-ms", type=float, help="target time per output token for <name>@auto (ms)")
    p.add_argument("--slo-ttft-ms", type=float, help="target time to first token for <name>@auto (ms)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest accepted request body")
    p.add_argument("--draft-budget", type=float,
                   help="nested self-speculative decoding: this smaller budget drafts tokens that every larger served "
                        "budget verifies in one pass (greedy output unchanged)")
    p.add_argument("--draft-tokens", type=int, default=2,
                   help="with --draft-budget: tokens drafted per round (2: the fastest measured)")
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="on SIGTERM / Ctrl-C: seconds to finish the requests in flight before ending them")


def served_name(checkpoint: str) -> str:
    """runs/quickstart/elastic/checkpoints -> 'elastic': the run's directory, not the generic 'checkpoints'."""
    path = Path(checkpoint).resolve()
    return path.parent.name if path.name == "checkpoints" else path.name


def _budgets(text: str | None, trained: tuple[float, ...]) -> tuple[float, ...]:
    from elastic_jax.model.functional import InputError

    if text is None:
        return trained
    try:
        chosen = tuple(float(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"--budgets: expected comma-separated numbers such as 1.0,0.4, got {text!r}") from None
    unknown = [b for b in chosen if not any(abs(b - t) < 1e-9 for t in trained)]
    if unknown:
        raise InputError(f"--budgets: {unknown} not trained; this checkpoint's budgets are {list(trained)}")
    return chosen


def _check_args(args, context_limit: int) -> int:
    """The sequence length to serve, after one clear error for any setting out of range."""
    from elastic_jax.model.functional import InputError

    for name in ("slots", "max_waiting", "decode_steps", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    chunk = args.prefill_chunk
    if chunk < 1 or chunk & (chunk - 1) or chunk.bit_length() % 2 != 1:
        raise InputError(f"--prefill-chunk: must be a power of 4 (1, 4, 16, 64, ...), got {args.prefill_chunk}")
    length = context_limit if args.max_model_len is None else args.max_model_len
    if not 2 <= length <= context_limit:
        raise InputError(f"--max-model-len: must be in [2, {context_limit}] (the model's context), got {length}")
    return length


def _draft_strategy(args, engine):
    """SpeculativeDecode for --draft-budget (None without it), after one clear error for a bad setting."""
    from elastic_jax.elastic.spec import ElasticError
    from elastic_jax.model.functional import InputError
    from elastic_jax.serve.speculative import SpeculativeDecode

    if getattr(args, "draft_budget", None) is None:
        return None
    if args.draft_tokens < 1:
        raise InputError(f"--draft-tokens: must be >= 1, got {args.draft_tokens}")
    if not 0.0 < args.draft_budget < 1.0:
        raise InputError(f"--draft-budget: a budget in (0, 1) smaller than the served ones, got {args.draft_budget}")
    try:
        engine.arch(args.draft_budget)
    except (ElasticError, InputError) as err:
        raise InputError(f"--draft-budget: {err}") from None
    log.info("drafting with budget %g, %d tokens per round", args.draft_budget, args.draft_tokens)
    return SpeculativeDecode(engine, args.draft_budget, args.draft_tokens)


def build_state(args):
    """The engine, scheduler and HTTP state of a server, from the verb's arguments (nothing listens yet)."""
    from elastic_jax.data.chat import chat_prompt, resolve_template
    from elastic_jax.inference.engine import check_elastic_checkpoint
    from elastic_jax.inference.load import load_engine
    from elastic_jax.serve.app import ServerState
    from elastic_jax.serve.metrics import ServerMetrics
    from elastic_jax.serve.models import ModelNames
    from elastic_jax.serve.policy import AutoScaler
    from elastic_jax.serve.scheduler import Scheduler, SchedulerConfig

    if not Path(args.checkpoint, "parent").is_dir():  # a quantised checkpoint holds its metadata under router/
        check_elastic_checkpoint(args.checkpoint)  # one clear error for a path that is not one
    engine = load_engine(args.checkpoint)
    context = _check_args(args, engine.cfg.max_position_embeddings)
    names = ModelNames(args.served_model_name or served_name(args.checkpoint), _budgets(args.budgets, engine.budgets))
    metrics = ServerMetrics()

    def changed(old: float, new: float, why: str) -> None:
        metrics.budget_changes.inc()
        metrics.auto_budget.set(new)

    scaler = AutoScaler(names.trained, args.slo_tpot_ms, args.slo_ttft_ms, on_change=changed)
    metrics.auto_budget.set(scaler.budget)
    config = SchedulerConfig(args.slots, context, args.max_waiting, args.prefill_chunk, args.decode_steps)
    strategy = _draft_strategy(args, engine)
    if strategy is not None:  # a round writes up to k drafted tokens beyond the text: requests leave room for them
        context -= strategy.k
    scheduler = Scheduler(engine, names, config, metrics, scaler, strategy)
    tokenizer, template = engine.tokenizer, resolve_template(None, engine.tokenizer)
    return ServerState(scheduler, names, metrics, encode=lambda text: tokenizer.encode(text, add_bos=True),
                       chat=lambda messages: chat_prompt(messages, tokenizer, template),
                       vocab=engine.cfg.vocab_size, context=context,
                       api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_body_bytes=args.max_body_bytes)


def run_serve(args) -> int:
    try:
        import uvicorn

        from elastic_jax.serve.app import create_app
    except ImportError as err:
        print(f"error: serve needs the server libraries ({err.name} is missing): pip install 'elastic_jax[serve]'",
              file=sys.stderr)
        return 2
    from elastic_jax.serve.graceful import GracefulServer

    logging.getLogger("elastic_jax").setLevel(min(logging.getLogger().level, logging.INFO))
    state = build_state(args)
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, log_level="info",
                            timeout_graceful_shutdown=int(args.grace_s) + 5, access_log=False)
    server = GracefulServer(config, state.scheduler, args.grace_s)
    state.scheduler.start()
    log.info("serving %s at http://%s:%d/v1", ", ".join(state.names.ids()), args.host, args.port)
    try:
        server.run()
    finally:
        state.scheduler.stop()
    log.info("stopped")
    return 0


__all__ = ["add_serve_args", "build_state", "run_serve", "served_name"]

"""`python -m elastic_jax.train [pretrain] --config C --workdir W [--config.a.b=v ...]`: run_pretrain from a shell.

Exits 0 after a normal finish and after a SIGTERM-triggered save, non-zero with a one-line message on a
configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from elastic_jax.config import ConfigError
from elastic_jax.experiment import load_experiment


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(known args, --config.x=y overrides)."""
    parser = argparse.ArgumentParser(prog="python -m elastic_jax.train", description="Pretrain an elastic_jax model.")
    parser.add_argument("verb", nargs="?", default="pretrain", choices=["pretrain"])
    parser.add_argument("--config", required=True, help="config file or name in configs/ (tiny, small, ...)")
    parser.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics.jsonl, tensorboard/")
    parser.add_argument("--log-level", default="INFO")
    args, rest = parser.parse_known_args(list(argv))
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments {bad}; overrides look like --config.train.lr=1e-3")
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    from elastic_jax.process import tune_process

    tune_process()  # this process is the command's own (see elastic_jax/process.py)
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(max(logging.WARNING, logging.getLogger().level))  # Orbax's per-save chatter
    from elastic_jax.train.loop import run_pretrain

    try:
        config = load_experiment(args.config, overrides)
        result = run_pretrain(config, args.workdir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"result": result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

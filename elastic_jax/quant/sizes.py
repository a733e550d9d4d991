"""Bytes of a quantised checkpoint against its bf16 form, from the declarations alone (no weights read):

    python -m elastic_jax.quant.sizes --config nemotron3_nano_30b_a3b
    python -m elastic_jax.quant.sizes --checkpoint quickstart/elastic/checkpoints

For each format: the quantised tensors (with their scales) against the same tensors in bf16, and the whole parent
checkpoint (excluded weights, embeddings, norms and SSM parameters in bf16) against all of it in bf16.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import numpy as np

from elastic_jax.config import ModelConfig
from elastic_jax.experiment import load_config
from elastic_jax.model.hybrid import model_declarations
from elastic_jax.model_io import model_config_of, read_metadata
from elastic_jax.quant.params import FORMATS, planned_bytes, quantised_names


def size_rows(cfg: ModelConfig, excluded: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per format: bytes of the quantised tensors and of the whole checkpoint, and their bf16 counterparts."""
    excluded = None if excluded is None else tuple(excluded)
    names = set(quantised_names(cfg, excluded))
    quantised = sum(int(np.prod(d.shape)) for d in model_declarations(cfg) if d.name in names)
    whole_bf16 = sum(int(np.prod(d.shape)) for d in model_declarations(cfg)) * 2
    rows = []
    for fmt in FORMATS:
        whole = planned_bytes(cfg, fmt, excluded)
        tensors = whole - (whole_bf16 - 2 * quantised)  # the unquantised rest is bf16 in both
        rows.append({"format": fmt, "tensors": len(names), "tensor_bytes": tensors, "tensor_bf16_bytes": 2 * quantised,
                     "checkpoint_bytes": whole, "checkpoint_bf16_bytes": whole_bf16})
    return rows


def _pair(a: int, b: int) -> str:
    scale, unit = (1e6, "MB") if b >= 1e7 else (1e3, "KB")
    return f"{a / scale:,.1f} / {b / scale:,.1f} {unit}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'format':>7} {'quantised tensors':>30} {'ratio':>6} {'whole checkpoint':>30} {'ratio':>6}"]
    for r in rows:
        t = _pair(r["tensor_bytes"], r["tensor_bf16_bytes"])
        w = _pair(r["checkpoint_bytes"], r["checkpoint_bf16_bytes"])
        lines.append(f"{r['format']:>7} {t:>30} {r['tensor_bytes'] / r['tensor_bf16_bytes']:>6.3f} {w:>30} "
                     f"{r['checkpoint_bytes'] / r['checkpoint_bf16_bytes']:>6.3f}")
    lines.append(f"({rows[0]['tensors']} quantised tensors; bytes against bf16; NVIDIA's default exclusions)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastic_jax.quant.sizes", description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="config file or name in configs/")
    src.add_argument("--checkpoint", help="checkpoint directory (its model config)")
    args = parser.parse_args(argv)
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = model_config_of(args.checkpoint, read_metadata(args.checkpoint))
    print(format_rows(size_rows(cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `plan` verb's arguments, apart from plan.py so that `elastic-jax --help` builds its parser without jax."""

from __future__ import annotations

from typing import Any


def add_plan_args(p: Any) -> None:
    """The `plan` verb's arguments (its --config is added by the CLI)."""
    p.add_argument("--target", required=True,
                   help="v5p-128 / v5e-8 / v6e-16 (TPU slice), v5p:2x2x1 (TPU topology), 8xH100 / 16xH100 / 8xA100-80")
    p.add_argument("--mode", choices=("static", "mask"), default="static",
                   help="static: fixed architectures train as sliced students; mask: router masks on the parent")
    p.add_argument("--budgets", type=float, nargs="+", help="budgets to plan (default: the config's, or 1 0.7 0.4)")
    p.add_argument("--mesh", action="append",
                   help="a mesh to compile, e.g. data=1,fsdp=-1 (repeatable); default: the experiment's mesh and "
                        "FSDP / tensor / expert variants")
    p.add_argument("--programs", default="elastic,pretrain", help="comma-separated: elastic, pretrain")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

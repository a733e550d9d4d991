"""Slash-separated parameter paths ("layers_0/mixer/in_x/kernel") and the nested dicts they name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


__all__ = ["unflatten"]

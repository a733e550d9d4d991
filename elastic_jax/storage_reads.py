"""Storage bytes read by tensorstore in this process: how a partial restore shows it touches only its own bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorstore as ts


def bytes_read() -> int:
    """Bytes read by tensorstore key-value stores in this process so far (all drivers)."""
    total = 0
    for metric in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/"):
        if metric["name"].endswith("/bytes_read"):
            total += sum(int(v.get("value", 0)) for v in metric["values"])
    return total


class ReadCounter:
    """Bytes read inside a `with count_bytes_read() as counter:` block (`counter.bytes`)."""

    bytes: int = 0


@contextlib.contextmanager
def count_bytes_read() -> Iterator[ReadCounter]:
    """Measure storage bytes read by tensorstore (e.g. by restore_slice) within the block."""
    counter, start = ReadCounter(), bytes_read()
    try:
        yield counter
    finally:
        counter.bytes = bytes_read() - start

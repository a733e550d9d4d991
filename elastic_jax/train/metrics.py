"""Where metrics go: `metrics.jsonl` (one JSON object per record) and TensorBoard event files (tensorboardX)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _summary_writer_class() -> type:
    """tensorboardX.SummaryWriter, imported without pulling in torch (which tensorboardX imports if installed).

    Importing torch costs seconds at every start-up and scalars never need it; torch stays importable later.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def truncate_after(path: Path, step: int) -> int:
    """Drop the records of `path` past `step` (a resumed run redoes those steps); returns how many were dropped."""
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _step_of(line) <= step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)  # atomic: a crash here leaves the old or the new file, never half of one
    return len(lines) - len(kept)


def _step_of(line: str) -> float:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # a torn last line (the process was killed mid-write) goes too


class MetricsWriter:
    """Append scalar metrics per step to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/` (process 0 only).

    `start_step` is the step the run starts from (0, or the restored checkpoint's): records past it, written
    by an interrupted run before it was stopped, are dropped from metrics.jsonl and purged from TensorBoard,
    so every step appears once.
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, start_step: int | None = None):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if start_step is not None:
                truncate_after(self.path, start_step)
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115 - closed in close()
        purge = None if start_step is None else start_step + 1  # TensorBoard hides events at steps >= purge
        self._tb = _summary_writer_class()(str(Path(workdir) / "tensorboard"), purge_step=purge) if enabled else None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Record `metrics` (names like "train/loss") at `step`; non-finite values are kept as strings."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._file.flush()
        for key, value in clean.items():
            if isinstance(value, float):
                self._tb.add_scalar(key, value, int(step))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of `<workdir>/metrics.jsonl`, in the order written (a resumed run's once per step)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Metrics: one JSON object per line in `metrics.jsonl`, and a short console line."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        value = arr.item() if arr.size == 1 else arr.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Logger:
    def __init__(self, logdir: str | Path, console_every: float = 10.0):
        self.path = Path(logdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")
        self.console_every = console_every
        self.last_console = 0.0

    def write(self, record: Mapping[str, Any]) -> None:
        row = {k: _plain(v) for k, v in record.items()}
        row.setdefault("time", round(time.time(), 3))
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def console(self, text: str, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_console >= self.console_every:
            print(text, flush=True)
            self.last_console = now

    def close(self) -> None:
        self.file.close()


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
    """Averages a list of metric dicts (device arrays are fetched here, once per log interval)."""
    if not history:
        return {}
    keys = history[0].keys()
    stacked = {k: np.asarray([np.asarray(h[k], np.float64) for h in history]) for k in keys}
    return {k: float(v.mean()) for k, v in stacked.items()}

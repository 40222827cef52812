"""Request traces: arrival times and prompt/output lengths (Azure LLM inference trace 2023).

The files live outside the repository (../shared/data/azure-llm-2023/ next to the checkout);
SAGESCHED_DATA_DIR points elsewhere (the folder that holds azure-llm-2023/).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

TRACES = ("conv", "code")


def data_dir() -> Path:
    env = os.environ.get("SAGESCHED_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; arrivals in seconds from the first request."""

    name: str
    arrivals: np.ndarray
    prompts: np.ndarray
    outputs: np.ndarray

    def __len__(self) -> int:
        return len(self.arrivals)

    def slice(self, start: int, stop: int) -> "Trace":
        return Trace(self.name, self.arrivals[start:stop], self.prompts[start:stop], self.outputs[start:stop])

    def split(self, history_fraction: float) -> tuple["Trace", "Trace"]:
        """Earlier part (history a predictor may learn from), later part (replayed). In time, not
        at random: the replay must not leak into what was known before it."""
        cut = int(len(self) * history_fraction)
        return self.slice(0, cut), self.slice(cut, len(self))


def _seconds(stamp: str) -> float:
    # 7 fractional digits: datetime takes at most 6
    head, _, frac = stamp.partition(".")
    return datetime.fromisoformat(head).timestamp() + float("0." + (frac or "0"))


def load_trace(name: str) -> Trace:
    path = Path(name) if name.endswith(".csv") else data_dir() / "azure-llm-2023" / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"trace {path} not found (set SAGESCHED_DATA_DIR)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([_seconds(r["TIMESTAMP"]) for r in rows])
    order = np.argsort(t, kind="stable")
    prompts = np.array([int(r["ContextTokens"]) for r in rows], dtype=np.int64)[order]
    outputs = np.array([int(r["GeneratedTokens"]) for r in rows], dtype=np.int64)[order]
    return Trace(path.stem, t[order] - t[order][0], np.maximum(prompts, 1), np.maximum(outputs, 1))
